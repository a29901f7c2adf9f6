"""A very small LM decomposed end to end through spd APIs: corpus -> LM -> SPD (KL) -> reload."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from spd.data import CorpusConfig, build_corpus
from spd.lm import TinyLMConfig, TinyLMTrainConfig, train_and_save_lm
from spd.models import decomposition_tokenizer_path, load_decomposition, load_decomposition_corpus
from spd.models.masks import MaskInfo
from spd.targets import TinyLM, load_target
from spd.targets.lm import LMData, LMDataConfig
from spd.train import SPDConfig, decompose
from spd.train.lm_metrics import MASK_KINDS, ce_and_kl


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lm")
    corpus = build_corpus(CorpusConfig(n_docs=120, vocab_size=300), root / "corpus")
    model_cfg = TinyLMConfig(d_model=16, n_layers=1, n_heads=2, d_mlp=32, n_ctx=16)
    ck = train_and_save_lm(
        corpus, TinyLMTrainConfig(model=model_cfg, steps=30, batch_size=8, log_every=1000), root / "lm"
    )
    return corpus, ck


def _spd(steps: int) -> SPDConfig:
    return SPDConfig(
        default_C=8,
        ci_fn={"fn_type": "shared_mlp", "hidden_dims": [8]},
        output_loss_type="kl",
        losses=[
            {"classname": "ImportanceMinimalityLoss", "coeff": 1e-3, "pnorm": 2.0},
            {"classname": "StochasticReconLoss", "coeff": 1.0},
            {"classname": "FaithfulnessLoss", "coeff": 1e3},
        ],
        lr_schedule={"start_val": 3e-3, "fn_type": "constant", "final_val_frac": 1.0},
        steps=steps,
        batch_size=4,
        faithfulness_warmup_steps=20,
        eval_freq=steps,
        n_eval_steps=1,
        train_log_freq=1,
    )


def test_load_target_dispatches_on_tiny_lm(tiny_lm) -> None:
    _, ck = tiny_lm
    model, config = load_target(ck.tokenizer_path.parent)
    assert isinstance(model, TinyLM) and config == ck.config
    tokens = torch.randint(0, ck.config.vocab_size, (2, 8))
    assert torch.equal(model(tokens), ck.model(tokens))


def test_lm_decomposition_end_to_end(tiny_lm, tmp_path: Path) -> None:
    corpus, ck = tiny_lm
    data = LMData(corpus, 16, LMDataConfig(dataset_seed=3))
    out = tmp_path / "spd"
    summary = decompose(
        ck.model,
        ck.config,
        _spd(60),
        out,
        seed=0,
        data=data,
        tokenizer=ck.tokenizer_path,
        extra_run_config={"corpus_dir": os.path.relpath(corpus.path, out)},
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    total = [r["train/loss/total"] for r in rows if "train/loss/total" in r]
    assert len(total) == 60 and all("train/loss/StochasticReconLoss" in r for r in rows if "train/loss/total" in r)
    assert sum(total[-10:]) / 10 < 0.5 * sum(total[:10]) / 10  # the training loss decreases
    m = summary["metrics"]
    for kind in MASK_KINDS:
        assert f"eval/lm/kl_{kind}" in m and f"eval/lm/ce_unrecovered_{kind}" in m
    assert m["eval/lm/kl_unmasked"] < m["eval/lm/kl_zero_masked"]
    assert "eval/l0/0.1_mean" in m
    # reload: identical tensors, the same outputs, and tokenizer + config found from the directory alone
    model = load_decomposition(out)
    assert set(model.module_to_c) == {"layers.0.mlp.up_proj", "layers.0.mlp.down_proj"}
    assert model.run_config["data"]["seq_len"] == 16 and model.run_config["data"]["dataset_seed"] == 3
    assert decomposition_tokenizer_path(out).read_bytes() == ck.tokenizer_path.read_bytes()
    state = torch.load(out / "model_60.pth", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    tokens = data.eval_batch(2)
    ones = {p: MaskInfo(mask=torch.ones(2, 16, c)) for p, c in model.module_to_c.items()}
    assert model(tokens, ones).shape == (2, 16, ck.config.vocab_size)
    assert load_decomposition_corpus(out).manifest == corpus.manifest


def test_ce_and_kl_exact_for_perfect_components(tiny_lm) -> None:
    """With V = Wᵀ, U = I every mask of ones reproduces the target: kl_unmasked = 0, ce_unmasked = ce_target."""
    _, ck = tiny_lm
    from spd.models import ComponentModel

    model = ComponentModel(ck.model, {"layers.0.mlp.up_proj": 32}, ci_fn_type="shared_mlp", ci_hidden_dims=[4])
    comp = model.components("layers.0.mlp.up_proj")
    with torch.no_grad():
        comp.V.copy_(model.target_weight("layers.0.mlp.up_proj").T)
        comp.U.copy_(torch.eye(32))
    tokens = torch.randint(0, ck.config.vocab_size, (3, 10))
    target_out, acts = model.forward_with_inputs(tokens)
    ci = {p: torch.ones(*a.shape[:-1], 32) for p, a in acts.items()}
    m = ce_and_kl(model, tokens, target_out, ci)
    assert abs(m["kl_unmasked"]) < 1e-5 and abs(m["kl_ci_masked"]) < 1e-5 and abs(m["kl_stoch_masked"]) < 1e-5
    assert abs(m["ce_unmasked"] - m["ce_target"]) < 1e-5
    assert m["kl_zero_masked"] > 1e-3 and m["ce_unrecovered_zero_masked"] == pytest.approx(1.0)
