"""The decompose stage end to end through the real CLI on the local executor, and its config contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from spd.models import load_decomposition
from spd.targets import TMSModel, TMSTargetConfig, save_target
from stages.decompose import STAGE, DecomposeConfig
from tests.conftest import run_cli, write_pipeline

TINY_SPD = {
    "default_C": 6,
    "steps": 30,
    "batch_size": 128,
    "eval_freq": 15,
    "n_eval_steps": 1,
    "faithfulness_warmup_steps": 10,
}


def test_config_needs_exactly_one_source() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        DecomposeConfig()
    with pytest.raises(ValidationError, match="exactly one"):
        DecomposeConfig(target={"kind": "tms"}, from_checkpoint="x")
    with pytest.raises(ValidationError):
        DecomposeConfig(target={"kind": "tms", "bogus": 1})
    cfg = DecomposeConfig(target={"kind": "tms", "n_features": 40, "n_hidden": 10})
    assert cfg.spd.steps == 10_000 and cfg.spd.batch_size == 4096 and STAGE.available


def test_decompose_stage_via_cli_then_reuse(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tc = TMSTargetConfig()
    save_target(TMSModel(tc), tc, tmp_path / "target")
    pipeline = {
        "run": {"name": "dec", "seed": 0},
        "executor": "local",
        "stages": {"decompose": {"target": {"kind": "checkpoint", "path": str(tmp_path / "target")}, "spd": TINY_SPD}},
    }
    write_pipeline(tmp_path / "p.yaml", pipeline)
    result = run_cli("p.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    status = run_cli("status", "runs/dec", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    states = {s["name"]: s["state"] for s in status.json()["stages"]}
    assert states["decompose"].lower() in {"done", "completed"}
    out = tmp_path / "runs/dec/stages/decompose/out"
    model = load_decomposition(out)
    assert model.module_to_c == {"linear1": 6, "linear2": 6}
    assert json.loads((out / "summary.json").read_text())["steps"] == 30

    reuse = {
        "run": {"name": "reuse", "seed": 0},
        "executor": "local",
        "stages": {"decompose": {"from_checkpoint": str(out)}},
    }
    write_pipeline(tmp_path / "r.yaml", reuse)
    result = run_cli("r.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    again = load_decomposition(tmp_path / "runs/reuse/stages/decompose/out")
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
