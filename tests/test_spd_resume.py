"""Resuming an SPD run from out_dir/resume/ (issue 26): a run killed after a checkpoint, run again with the same
config, ends exactly where an uninterrupted run ends (same weights, PPGD sources and metrics.jsonl)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from spd.data import CorpusConfig, build_corpus
from spd.data.corpus import Corpus
from spd.lm import TinyLMConfig, TinyLMTrainConfig, train_and_save_lm
from spd.targets import TMSModel, TMSTargetConfig, load_target
from spd.targets.lm import LMData, LMDataConfig
from spd.train import Decomposer, SPDConfig

STOCHASTIC_TMS = [
    {"classname": "FaithfulnessLoss", "coeff": 1.0},
    {"classname": "ImportanceMinimalityLoss", "coeff": 1e-3, "pnorm": 1.0},
    {"classname": "StochasticReconLoss", "coeff": 1.0},
    {"classname": "PersistentPGDReconLoss", "coeff": 1.0, "scope": {"type": "per_batch_per_position"}},
    {"classname": "PersistentPGDReconSubsetLoss", "coeff": 1.0, "n_warmup_steps": 1},
]
LM_LOSSES = [
    {"classname": "FaithfulnessLoss", "coeff": 1e3},
    {"classname": "CIMaskedReconLoss", "coeff": 1.0},
    {"classname": "StochasticReconLoss", "coeff": 1.0},
    {"classname": "ImportanceMinimalityLoss", "coeff": 1e-3, "pnorm": 2.0},
]
STEPS, SAVE_FREQ, KILL_AT = 12, 4, 10  # killed two steps after the save at 8: records 9 were logged, then lost


class Killed(RuntimeError):
    pass


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume_lm")
    corpus = build_corpus(CorpusConfig(n_docs=80, vocab_size=300), root / "corpus")
    model_cfg = TinyLMConfig(d_model=16, n_layers=1, n_heads=2, d_mlp=32, n_ctx=16)
    train_and_save_lm(corpus, TinyLMTrainConfig(model=model_cfg, steps=10, batch_size=8, log_every=1000), root / "lm")
    return root


def _cfg(losses: list[dict[str, Any]], **kw: Any) -> SPDConfig:
    return SPDConfig(
        default_C=5,
        losses=losses,
        steps=STEPS,
        save_freq=SAVE_FREQ,
        eval_freq=3,
        n_eval_steps=2,
        train_log_freq=1,
        faithfulness_warmup_steps=3,
        lr_schedule={"start_val": 1e-3, "fn_type": "cosine", "final_val_frac": 0.1},
        **kw,
    )


def _decomposer(kind: str, out: Path, lm_dir: Path, seed: int, logs: list[str], target_seed: int = 0) -> Decomposer:
    if kind == "tms":
        torch.manual_seed(target_seed)
        tc = TMSTargetConfig(n_hidden_layers=1)
        target = TMSModel(tc).eval().requires_grad_(False)
        cfg = _cfg(STOCHASTIC_TMS, batch_size=8, sampling="binomial")
        info = {"train_wall_s": time.perf_counter()}  # training metadata, differs each time: not part of the match
        return Decomposer(target, cfg, out, seed, torch.device("cpu"), tc, info, log=logs.append)
    lm, lm_config = load_target(lm_dir / "lm")
    data = LMData(Corpus(lm_dir / "corpus"), 16, LMDataConfig(dataset_seed=3))
    cfg = _cfg(LM_LOSSES, batch_size=4, output_loss_type="kl", ci_fn={"fn_type": "shared_mlp", "hidden_dims": [8]})
    return Decomposer(lm, cfg, out, seed, torch.device("cpu"), lm_config, log=logs.append, data=data)


def _run(
    kind: str, out: Path, lm_dir: Path, seed: int = 0, kill_at: int | None = None, target_seed: int = 0
) -> list[str]:
    """One run into out; with kill_at, it raises at the start of that step (a job killed mid-training)."""
    logs: list[str] = []
    dec = _decomposer(kind, out, lm_dir, seed, logs, target_seed)
    if kill_at is not None:
        train_step = dec._train_step

        def dying(step: int) -> dict[str, Any]:
            if step == kill_at:
                raise Killed(f"killed at step {step}")
            return train_step(step)

        dec._train_step = dying  # type: ignore[method-assign]
        with pytest.raises(Killed):
            dec.run()
    else:
        dec.run()
    return logs


def _records(out: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock field (no two runs share it)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def _same_checkpoints(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.pth"))
    assert names == sorted(p.name for p in b.glob("*.pth")) and f"model_{STEPS}.pth" in names
    for name in names:
        sa, sb = torch.load(a / name, weights_only=True), torch.load(b / name, weights_only=True)
        flat_a, flat_b = _flatten(sa), _flatten(sb)
        assert flat_a.keys() == flat_b.keys()
        for k, v in flat_a.items():
            assert torch.equal(v, flat_b[k]) if isinstance(v, torch.Tensor) else v == flat_b[k], (name, k)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _flatten(val, f"{prefix}{key}/").items()}
    return {prefix: obj}


@pytest.mark.parametrize("kind", ["tms", "lm"])
def test_killed_run_resumes_to_the_uninterrupted_result(kind: str, lm_dir: Path, tmp_path: Path) -> None:
    _run(kind, tmp_path / "whole", lm_dir)
    killed = tmp_path / "killed"
    _run(kind, killed, lm_dir, kill_at=KILL_AT)
    assert sorted(p.name for p in (killed / "resume").iterdir()) == ["metrics_8.jsonl", "state_8.pth"]
    assert max(r["step"] for r in _records(killed)) == KILL_AT - 1  # logged past the resume state
    logs = _run(kind, killed, lm_dir)
    assert any("resuming from step 8" in line for line in logs)
    assert not any("faithfulness warm-up" in line for line in logs)
    assert _records(killed) == _records(tmp_path / "whole")  # truncated to step 8, then the same records
    _same_checkpoints(killed, tmp_path / "whole")
    s_killed = json.loads((killed / "summary.json").read_text())
    s_whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert s_killed["metrics"] == s_whole["metrics"]
    assert s_killed["wall_s"] > 0
    assert not (killed / "resume").exists() and not (tmp_path / "whole" / "resume").exists()


def test_resume_state_of_another_config_is_ignored(lm_dir: Path, tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    _run("tms", killed, lm_dir, seed=0, kill_at=KILL_AT)
    assert (killed / "resume" / "state_8.pth").is_file()
    logs = _run("tms", killed, lm_dir, seed=1)  # another seed: another run config
    assert any("ignoring the resume state" in line and "seed" in line for line in logs)
    assert not any("resuming" in line for line in logs)
    _run("tms", tmp_path / "fresh", lm_dir, seed=1)
    assert _records(killed) == _records(tmp_path / "fresh")
    _same_checkpoints(killed, tmp_path / "fresh")
    assert not (killed / "resume").exists()


def test_resume_state_of_another_target_is_ignored(lm_dir: Path, tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    _run("tms", killed, lm_dir, kill_at=KILL_AT)
    logs = _run("tms", killed, lm_dir, target_seed=1)  # the same configs, other target weights
    assert any("ignoring the resume state" in line and "another target" in line for line in logs)
    assert not any("resuming" in line for line in logs) and not (killed / "resume").exists()


def test_resume_state_is_written_at_every_save(lm_dir: Path, tmp_path: Path) -> None:
    _run("tms", tmp_path / "run", lm_dir, kill_at=5)
    state = torch.load(tmp_path / "run" / "resume" / "state_4.pth", weights_only=True)
    assert state["step"] == 4 and state["data"] == {"train:8": 5, "eval:8": 4}  # steps 0-4; evals at 0 and 3
    assert json.loads(state["run_config"]) == json.loads((tmp_path / "run" / "config.json").read_text())
    assert {"model", "optimizer", "ppgd", "rng", "elapsed_s", "last_eval"} <= set(state)
    kept = (tmp_path / "run" / "resume" / "metrics_4.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in kept] == [0, 1, 2, 3, 4]
