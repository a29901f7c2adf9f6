"""Orchestrator internals that the CLI tests cannot see: which executors a new invocation asks what is live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline import orchestrator
from tests.conftest import run_cli, write_pipeline

PIPELINE = {
    "run": {"name": "demo", "seed": 7},
    "executor": "local",
    "local": {"parallelism": 1},
    "stages": {"t_source": {"n_tasks": 1, "value": 2}},
}


@pytest.mark.parametrize(
    ("recorded", "asked"),
    [("local", ["LocalExecutor"]), ("slurm", ["SlurmExecutor", "LocalExecutor"])],
)
def test_start_asks_each_distinct_executor_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: str, asked: list[str]
) -> None:
    """The executor that ran the run last, then the planned one only when it is another (one sacct per run)."""
    pipeline = write_pipeline(tmp_path / "p.yaml", PIPELINE)
    first = run_cli("p.yaml", cwd=tmp_path)
    assert first.returncode == 0, first.stderr + first.stdout
    plan_json = tmp_path / "runs" / "demo" / "plan.json"
    record = json.loads(plan_json.read_text())
    record["executor"] = recorded
    plan_json.write_text(json.dumps(record))

    calls: list[str] = []

    def spy(run: Any, executor: Any, stages: list[str] | None = None) -> None:
        calls.append(type(executor).__name__)

    monkeypatch.setattr(orchestrator, "_assert_not_active", spy)
    monkeypatch.chdir(tmp_path)
    launch = orchestrator.start_run(pipeline)
    assert calls == asked
    assert launch.cached == ["t_source"] and not launch.work
