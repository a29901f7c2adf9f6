"""Data-parallel decompose through the pipeline (issue 26): the local executor's torchrun and the SLURM executor's srun.

One module-scoped 1-process run of the quickstart LM decomposition (the quickstart's shapes, a shorter LM training,
the deterministic loss set) is the reference. A 2-process run on the local executor with the same global batch
logs the same losses at every step and ends with the same weights; on the local SLURM cluster 2 processes on the
node complete with one checkpoint and one metrics file, and killing one process mid-run fails the stage within the
collective timeout, after which `rerun --stage decompose` completes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pipeline.runs import RunDir
from testkit.slurm_support import cancel_names, wait_for
from tests.conftest import REPO_ROOT, run_cli, write_pipeline
from tests.test_slurm import check, slurm, slurm_cluster, wait_queue_empty, wait_states  # noqa: F401 (fixture)

QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"
STEPS = 20
DETERMINISTIC_LOSSES = [
    {"classname": "ImportanceMinimalityLoss", "coeff": 1.0e-3, "pnorm": 2.0},
    {"classname": "CIMaskedReconLoss", "coeff": 1.0},
    {"classname": "FaithfulnessLoss", "coeff": 1.0e5},
]


def _decompose_section(**spd: Any) -> dict[str, Any]:
    """The quickstart's decompose section: its corpus, LM shapes and SPD settings, a shorter LM training."""
    section = yaml.safe_load(QUICKSTART.read_text())["stages"]["decompose"]
    section["target"]["train"]["steps"] = 30
    section["spd"].update(
        {"losses": DETERMINISTIC_LOSSES, "steps": STEPS, "train_log_freq": 1, "eval_freq": STEPS},
        faithfulness_warmup_steps=20,
        **spd,
    )
    return section


def _pipeline(path: Path, name: str, section: dict[str, Any], executor: str, resources: dict[str, Any]) -> Path:
    slurm_section: dict[str, Any] = {"resources": {"decompose": resources}}
    if executor == "slurm":
        slurm_section["profile"] = "local"
    data = {
        "run": {"name": name, "seed": 0, "out_dir": str(path.parent / "runs")},
        "executor": executor,
        "slurm": slurm_section,
        "stages": {"decompose": section},
    }
    return write_pipeline(path, data)


def _train_losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss/total"] for r in rows if "train/loss/total" in r}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart LM decomposition on one process: its out/ (target/ and corpus/ serve the other runs)."""
    base = tmp_path_factory.mktemp("dp-one")
    path = _pipeline(base / "one.yaml", "one", _decompose_section(), "local", {})
    result = run_cli(path, cwd=base, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return RunDir(base / "runs" / "one").out_dir("decompose")


def _same_target(one: Path) -> dict[str, Any]:
    """The reference run's target and corpus as a saved target: the 2-process run decomposes the same LM."""
    section = _decompose_section()
    section["target"] = {"kind": "checkpoint", "path": str(one / "target"), "corpus": str(one / "corpus"),
                         "data": section["target"]["data"]}  # fmt: skip
    return section


def test_two_processes_on_the_local_executor_train_what_one_process_trains(one_process: Path, tmp_path: Path) -> None:
    path = _pipeline(tmp_path / "two.yaml", "two", _same_target(one_process), "local", {"tasks_per_node": 2})
    result = run_cli(path, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    run = RunDir(tmp_path / "runs" / "two")
    out = run.out_dir("decompose")
    one, two = _train_losses(one_process), _train_losses(out)
    assert sorted(two) == list(range(STEPS)) and sorted(one) == sorted(two)
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), f"step {step}"
    weights_one = torch.load(one_process / f"model_{STEPS}.pth", weights_only=True)
    weights_two = torch.load(out / f"model_{STEPS}.pth", weights_only=True)
    assert weights_one.keys() == weights_two.keys()
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_two[key], value, rtol=1e-5, atol=1e-7, msg=key)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert "rank 1 of 2" in run.rank_log("decompose", "0", 1).read_text()


# --- the local SLURM cluster -----------------------------------------------------------------------------------
SLURM_STEPS, SAVE_FREQ = 400, 40


@pytest.fixture
def slurm_run_id() -> str:
    rid = f"dp-{uuid.uuid4().hex[:6]}"
    yield rid
    cancel_names([f"{rid}.decompose"])


def _rank_pid(run: RunDir, rank: int) -> int | None:
    log = run.rank_log("decompose", "0", rank)
    found = re.search(r"start \(pid (\d+) on", log.read_text()) if log.exists() else None
    return int(found.group(1)) if found else None


def _last_step(out: Path) -> int:
    metrics = out / "metrics.jsonl"
    if not metrics.exists():
        return -1
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
    return max(steps, default=-1)


@slurm
def test_two_processes_on_slurm_complete_and_a_killed_process_fails_the_stage_then_rerun_resumes(
    one_process: Path, tmp_path: Path, slurm_run_id: str
) -> None:
    section = _same_target(one_process)
    section["spd"].update(steps=SLURM_STEPS, save_freq=SAVE_FREQ, eval_freq=SLURM_STEPS, train_log_freq=10)
    section["collective_timeout_s"] = 60
    resources = {"tasks_per_node": 2, "cpus_per_task": 1, "mem_gb": 3}
    path = _pipeline(tmp_path / "dp.yaml", slurm_run_id, section, "slurm", resources)
    check(run_cli(path, cwd=tmp_path))
    run = RunDir(tmp_path / "runs" / slurm_run_id)
    out = run.out_dir("decompose")
    wait_for(lambda: _last_step(out) >= 2 * SAVE_FREQ and _rank_pid(run, 1), 600, what="training past 2 checkpoints")
    pid = _rank_pid(run, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # rank 1 vanishes without a word: rank 0 must not wait for it forever
    killed_at = time.monotonic()
    states = wait_states(run, {"decompose": "FAILED"}, timeout=section["collective_timeout_s"] + 60)
    failed_after = time.monotonic() - killed_at
    assert failed_after < section["collective_timeout_s"] + 60
    print(
        f"rank 1 killed at step ~{_last_step(out)}; stage FAILED {failed_after:.1f} s later: {states['decompose'].error}"
    )
    error = states["decompose"].error
    # rank 0 records the broken connection (its collective fails at once), unless srun's kill-on-bad-exit ends it
    # first: then the scheduler's state is the record
    assert "rank 0 of 2: RuntimeError" in error or "SLURM state FAILED" in error, error
    wait_queue_empty(run, ["decompose"])
    resumed_from = _last_step(out)
    check(run_cli("rerun", run.root, "--stage", "decompose", cwd=tmp_path))
    wait_states(run, {"decompose": "COMPLETED"}, timeout=900)
    log = run.task_log("decompose", "0").read_text()
    resumed = re.search(r"resuming from step (\d+)", log)
    assert resumed is not None, log[-3000:]
    assert int(resumed.group(1)) >= SAVE_FREQ and resumed_from >= SAVE_FREQ
    print(f"rerun: {resumed.group(0)} (last logged step before the rerun {resumed_from})")
    # rank 0 alone wrote: one metrics file whose steps run once each from 0 to the end, one final checkpoint
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == SLURM_STEPS
    assert (out / f"model_{SLURM_STEPS}.pth").is_file() and not (out / "resume").exists()
