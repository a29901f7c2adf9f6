"""The worker entry in-process: idempotence, upstream checks, failure records, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.atomic import append_jsonl, atomic_write_json, make_read_only, make_writable, read_jsonl
from pipeline.errors import UpstreamMissing
from pipeline.worker import StageTask, run_stage_task


def _task(tmp_path: Path, index: int | None, **config: object) -> StageTask:
    stage_dir = tmp_path / "run" / "stages" / "t_source"
    (stage_dir / "tasks").mkdir(parents=True, exist_ok=True)
    return StageTask(
        stage="t_source",
        module="testkit.stages_for_tests",
        config={"n_tasks": 2, **config},
        key="k1",
        seed=5,
        num_tasks=2,
        stage_dir=str(stage_dir),
        index=index,
    )


def test_task_with_marker_is_skipped(tmp_path: Path) -> None:
    task = _task(tmp_path, 0)
    run_stage_task(task)
    part = Path(task.stage_dir) / "out" / "part-0.json"
    first = part.stat().st_mtime_ns
    part.unlink()
    run_stage_task(task)  # marker present: nothing is redone
    assert not part.exists()
    assert first > 0


def test_merge_requires_every_marker_then_writes_done(tmp_path: Path) -> None:
    run_stage_task(_task(tmp_path, 0))
    with pytest.raises(RuntimeError, match=r"missing tasks \[1\]"):
        run_stage_task(_task(tmp_path, None))
    failed = json.loads((Path(_task(tmp_path, None).stage_dir) / "tasks" / "merge.failed").read_text())
    assert "missing tasks [1]" in failed["error"]
    run_stage_task(_task(tmp_path, 1))
    run_stage_task(_task(tmp_path, None))
    stage_dir = Path(_task(tmp_path, None).stage_dir)
    assert json.loads((stage_dir / "done.json").read_text())["key"] == "k1"
    assert json.loads((stage_dir / "out" / "total.json").read_text()) == {"total": 3, "parts": 2}
    run_stage_task(_task(tmp_path, None))  # idempotent: a second merge is a no-op


def test_failure_is_recorded_and_raised(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="planted failure"):
        run_stage_task(_task(tmp_path, 1, fail_task=1))
    record = json.loads((Path(_task(tmp_path, 1).stage_dir) / "tasks" / "1.failed").read_text())
    assert record["task"] == "1" and "planted failure" in record["error"] and "Traceback" in record["traceback"]
    run_stage_task(_task(tmp_path, 1))  # fixed config: the failure record is cleared
    assert not (Path(_task(tmp_path, 1).stage_dir) / "tasks" / "1.failed").exists()


def test_missing_upstream_done_json_refuses_to_run(tmp_path: Path) -> None:
    stage_dir = tmp_path / "run" / "stages" / "t_sink"
    (stage_dir / "tasks").mkdir(parents=True)
    task = StageTask(
        stage="t_sink",
        module="testkit.stages_for_tests",
        config={},
        key="k",
        seed=0,
        num_tasks=1,
        stage_dir=str(stage_dir),
        upstream_dirs={"t_source": str(tmp_path / "x" / "out")},
        upstream_markers={"t_source": str(tmp_path / "x" / "done.json")},
        index=0,
    )
    with pytest.raises(UpstreamMissing, match="upstream stage\\(s\\) not finished.*t_source"):
        run_stage_task(task)
    assert not (stage_dir / "tasks" / "0.done").exists()


def test_stage_task_round_trips_and_is_small(tmp_path: Path) -> None:
    task = _task(tmp_path, 1)
    assert StageTask.from_json(task.to_json()) == task
    assert len(task.to_json()) < 1024


def test_atomic_json_and_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.json"
    atomic_write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]
    log = tmp_path / "log.jsonl"
    append_jsonl(log, {"n": 1})
    with open(log, "a") as f:
        f.write('{"n": 2')  # a torn last line from a crash
    assert read_jsonl(log) == [{"n": 1}]


def test_worker_env_puts_snapshot_first_and_limits_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.snapshot import worker_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("PYTHONPATH", "/some/where")
    env = worker_env(tmp_path / "snap", threads=0)
    assert env["PYTHONPATH"].split(":")[:2] == [str(tmp_path / "snap"), "/some/where"]
    assert env["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert worker_env(tmp_path / "snap", threads=2)["OMP_NUM_THREADS"] == "7"


@pytest.mark.parametrize("change_mode", [make_writable, make_read_only])
def test_mode_changes_skip_files_a_sibling_task_renames_away(
    change_mode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # array tasks share out/: while one task walks it, a sibling renames its temp file into place (seen in CI:
    # the walk listed .part-0.json.tmp, which was gone before its chmod, and the task failed)
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-1.json").write_text("{}")
    real_walk = os.walk

    def walk_with_a_vanished_file(top, *args, **kwargs):
        for dirpath, dirnames, filenames in real_walk(top, *args, **kwargs):
            yield dirpath, dirnames, [*filenames, ".part-0.json.tmp"]  # listed, then renamed away

    monkeypatch.setattr(os, "walk", walk_with_a_vanished_file)
    change_mode(out)
    writable = bool((out / "part-1.json").stat().st_mode & 0o200)
    assert writable == (change_mode is make_writable)
