"""A tiny LM decomposition built through the real decompose stage, for tests of later stages.

Harvest, attributions and the LLM stages need a decomposition directory with a model, tokenizer and
corpus (the decompose stage's out/ layout). Training it takes a few seconds on CPU; use it through a
module- or session-scoped fixture.
"""

from __future__ import annotations

from pathlib import Path

from stages.base import StageContext
from stages.decompose import STAGE as DECOMPOSE
from stages.decompose import DecomposeConfig

# A small harvest of the tiny LM (6 batches of 8 windows, short contexts) for tests that need a harvest store to read.
SMALL_HARVEST = {
    "n_tasks": 2,
    "device": "cpu",
    "batch_size": 8,
    "n_batches": 6,
    "ci_threshold": 0.1,
    "context_tokens_per_side": 4,
    "examples_per_component": 6,
    "top_examples_per_component": 4,
}


def tiny_lm_decompose_config(
    *,
    n_docs: int = 300,
    vocab_size: int = 300,
    spd_steps: int = 60,
    default_c: int = 16,
    seq_len: int = 32,
    d_model: int = 32,
    n_layers: int = 1,
    n_heads: int = 2,
    d_mlp: int = 64,
    lm_steps: int = 60,
    ci_hidden: int = 16,
    faithfulness_warmup_steps: int = 20,
    train_log_freq: int = 10,
) -> DecomposeConfig:
    """Decompose config of a tiny LM on the planted-feature corpus (both MLP projections of every layer).

    The defaults are the tests' 1-layer model; benchmarks/attributions_speed.py asks for the quickstart's
    shapes through the same builder.
    """
    return DecomposeConfig.model_validate(
        {
            "device": "cpu",
            "target": {
                "kind": "tiny_lm",
                "corpus": {"seed": 0, "n_docs": n_docs, "vocab_size": vocab_size},
                "train": {
                    "model": {
                        "d_model": d_model,
                        "n_layers": n_layers,
                        "n_heads": n_heads,
                        "d_mlp": d_mlp,
                        "n_ctx": seq_len,
                    },
                    "steps": lm_steps,
                    "batch_size": 8,
                    "seed": 0,
                    "dataset_seed": 0,
                },
                "data": {"seq_len": seq_len, "dataset_seed": 0},
            },
            "spd": {
                "default_C": default_c,
                "ci_fn": {"fn_type": "shared_mlp", "hidden_dims": [ci_hidden]},
                "output_loss_type": "kl",
                "losses": [
                    {"classname": "ImportanceMinimalityLoss", "coeff": 1e-3, "pnorm": 2.0},
                    {"classname": "StochasticReconLoss", "coeff": 1.0},
                    {"classname": "FaithfulnessLoss", "coeff": 1e3},
                ],
                "lr_schedule": {"start_val": 3e-3, "fn_type": "constant", "final_val_frac": 1.0},
                "steps": spd_steps,
                "batch_size": 4,
                "faithfulness_warmup_steps": faithfulness_warmup_steps,
                "eval_freq": spd_steps,
                "n_eval_steps": 1,
                "train_log_freq": train_log_freq,
            },
        }
    )


def build_tiny_lm_decomposition(out_dir: Path, config: DecomposeConfig | None = None, seed: int = 0) -> Path:
    """Run the decompose stage's task into out_dir and return it (a directory `load_decomposition` reads)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(stage="decompose", out_dir=out_dir, upstream_dirs={}, num_tasks=1, seed=seed)
    assert DECOMPOSE.run_task is not None
    DECOMPOSE.run_task(config or tiny_lm_decompose_config(), ctx, 0)
    return out_dir
