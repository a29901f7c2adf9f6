"""Hardening of the run records and the verbs over them: what an adversarial probe broke, each reproduced.

A finished run of the test-only stages is made once per module; each test works on its own copy (`cp -a`,
as a user would copy a run) and tampers with it the way the probe did: a copied live run, a plan.json edited
by hand, damaged journals, odd arguments. Every refusal must be one clear line and exit 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.atomic import append_jsonl, read_jsonl
from pipeline.executors import slurm as slurm_executor
from pipeline.executors.slurm import SchedulerRow, SlurmExecutor, read_stage_jobs
from pipeline.runs import RunDir
from spd.harvest import HarvestSettings, merge_harvest, run_harvest_task
from testkit.lm_fixtures import build_tiny_lm_decomposition
from tests.conftest import run_cli, write_pipeline


def _pipeline(**source: Any) -> dict[str, Any]:
    return {
        "run": {"name": "demo", "seed": 7},
        "executor": "local",
        "local": {"parallelism": 2},
        "stages": {"t_source": {"n_tasks": 2, "value": 2, **source}, "t_sink": {"scale": 10}, "t_after": {}},
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed run of t_source -> t_sink -> t_after (the module's only full run)."""
    home = tmp_path_factory.mktemp("finished")
    write_pipeline(home / "p.yaml", _pipeline())
    result = run_cli("p.yaml", cwd=home)
    assert result.returncode == 0, result.stdout + result.stderr
    return home


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    """This test's own copy of the finished run's working directory (pipeline file and runs/demo)."""
    shutil.copytree(finished, tmp_path / "w", symlinks=True)
    return tmp_path / "w"


def _states(cwd: Path, run: str = "runs/demo") -> dict[str, str]:
    result = run_cli("status", run, "--json", cwd=cwd)
    assert result.returncode in (0, 1), result.stderr
    return {s["name"]: s["state"] for s in result.json()["stages"]}


def _refused(result: Any, *expected: str) -> None:
    """One clear line, exit 2, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("error:"), result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


# --- 1. cancel and status are scoped to their own run directory --------------------------------------------


def test_a_copy_of_a_live_run_has_nothing_live_and_its_cancel_touches_nothing_of_the_original(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(sleep_s=60))
    assert run_cli("p.yaml", "--no-wait", cwd=tmp_path).returncode == 0
    _wait_for(lambda: _states(tmp_path)["t_source"] == "RUNNING")
    try:
        subprocess.run(["cp", "-a", "runs/demo", "runs/copy"], cwd=tmp_path, check=True)
        copy = _states(tmp_path, "runs/copy")
        assert not {"RUNNING", "PENDING"} & set(copy.values()), copy
        cancelled = run_cli("cancel", "runs/copy", cwd=tmp_path)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "pid" not in cancelled.stdout and "driver" not in cancelled.stdout, cancelled.stdout
        original = _states(tmp_path)
        assert original["t_source"] == "RUNNING" and original["t_sink"] == "PENDING", original
        pids = [json.loads(p.read_text())["pid"] for p in (tmp_path / "runs/demo/stages/t_source/tasks").glob("*.pid")]
        assert pids and all(Path(f"/proc/{pid}").exists() for pid in pids)
        assert not (tmp_path / "runs/demo/stages/t_source/cancelled.json").exists()
    finally:
        assert run_cli("cancel", "runs/demo", cwd=tmp_path).returncode == 0
    assert _states(tmp_path)["t_source"] == "CANCELLED"


def test_slurm_records_of_a_copy_are_not_its_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same run id under another out_dir (job names match too): the copy neither shows nor scancels the jobs."""
    original = RunDir(tmp_path / "a" / "demo")
    original.stage_dir("s").mkdir(parents=True)
    record = {"executor": "slurm", "job_name": "demo.s", "submission": "1-tasks", "attempt": 1, "tasks": ["0"]}
    original.record_job(
        "s",
        {**record, "event": "submitted", "job_id": "77", "task_jobs": {"0": "77"}, "run_identity": original.identity()},
    )
    shutil.copytree(original.root, tmp_path / "b" / "demo")
    copy = RunDir(tmp_path / "b" / "demo")
    assert read_stage_jobs(original, "s").job_ids == ["77"]
    assert read_stage_jobs(copy, "s").job_ids == []

    cancelled: list[list[str]] = []
    row = SchedulerRow("77", "demo.s", "RUNNING")
    monkeypatch.setattr(slurm_executor, "query_squeue", lambda names: ({"77": row}, ""))
    monkeypatch.setattr(slurm_executor, "_run_tool", lambda args: cancelled.append(list(args)) or ("", ""))
    from pipeline.dag import Plan, PlannedStage
    from pipeline.resources import Resources

    stage = PlannedStage("s", "m", {}, (), {}, "k", 0, 1, Resources(), Resources())
    assert SlurmExecutor().cancel(copy, Plan({"s": stage}), ["s"]) == []
    assert cancelled == []
    monkeypatch.setattr(SlurmExecutor, "_wait_gone", staticmethod(lambda names, masters: None))
    assert SlurmExecutor().cancel(original, Plan({"s": stage}), ["s"]) == ["s (job 77)"]
    assert cancelled == [["scancel", "77"]]


def test_a_damaged_submission_time_widens_the_sacct_window() -> None:
    """A hand-edited `time` in jobs.jsonl: status asks sacct from a week back instead of raising."""
    just_now = slurm_executor.sacct_start(slurm_executor.now_iso())
    assert slurm_executor.sacct_start("not a time") < just_now


# --- 3. rerun recomputes keys from the recorded configs -------------------------------------------------------


def test_rerun_refuses_a_stage_whose_config_was_edited_in_plan_json(run_copy: Path) -> None:
    plan_path = run_copy / "runs/demo/plan.json"
    plan = json.loads(plan_path.read_text())
    sink = next(s for s in plan["stages"] if s["name"] == "t_sink")
    sink["config"]["scale"] = 1000
    plan_path.write_text(json.dumps(plan))
    before = (run_copy / "runs/demo/stages/t_sink/out/result.json").read_bytes()
    result = run_cli("rerun", "runs/demo", "--stage", "t_sink", "--force", cwd=run_copy)
    _refused(result, str(plan_path.resolve()), "cannot rerun 't_sink'", sink["key"])
    assert (run_copy / "runs/demo/stages/t_sink/out/result.json").read_bytes() == before
    assert not (run_copy / "runs/demo/superseded").exists()
    replanned = run_cli("plan", "p.yaml", "--json", cwd=run_copy).json()
    assert all(s["cached"] for s in replanned["stages"])  # nothing was saved under the old key


# --- 4. a moved run repairs its harvest -----------------------------------------------------------------------


def test_harvest_shards_of_a_moved_decomposition_still_merge(tmp_path: Path) -> None:
    """Task 0 ran before the run moved, task 1 is redone after: the digests agree, only the paths differ."""
    before = build_tiny_lm_decomposition(tmp_path / "before" / "decomposition")
    settings = HarvestSettings(
        device="cpu", batch_size=4, n_batches=4, n_tasks=2, ci_threshold=0.26, context_tokens_per_side=1
    )
    out = tmp_path / "harvest"
    run_harvest_task(before, out, settings, 0, seed=1, log=lambda _: None)
    after = tmp_path / "after" / "decomposition"
    shutil.copytree(before, after)
    shutil.rmtree(before)
    run_harvest_task(after, out, settings, 1, seed=1, log=lambda _: None)
    store = merge_harvest(out, 2, after, log=lambda _: None)
    assert store.is_file()
    import duckdb

    with duckdb.connect(str(store), read_only=True) as con:
        (recorded,) = con.execute("SELECT decomposition FROM provenance").fetchone()
    assert json.loads(recorded)["path"] == str(after.resolve())


# --- low: records that are damaged or edited by hand -----------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{}", "`executor`"),
        ("[]", "not a JSON object"),
        (None, "lacks the field 'key'"),
        ("stage ../../x", "is not a stage name"),
    ],
    ids=["empty-object", "list", "stage-without-key", "traversing-stage-name"],
)
def test_a_damaged_plan_json_is_a_clear_refusal_everywhere(run_copy: Path, content: str | None, expected: str) -> None:
    plan_path = run_copy / "runs/demo/plan.json"
    plan = json.loads(plan_path.read_text())
    if content is None:
        del plan["stages"][1]["key"]
        content = json.dumps(plan)
    elif content.startswith("stage "):
        plan["stages"][0]["name"] = content.removeprefix("stage ")
        content = json.dumps(plan)
    plan_path.write_text(content)
    for args in (
        ("status", "runs/demo"),
        ("cancel", "runs/demo", "--stage", "../../x"),
        ("rerun", "runs/demo", "--stage", "t_sink"),
        ("logs", "runs/demo", "--stage", "t_sink"),
        ("report", "runs/demo"),
    ):
        _refused(run_cli(*args, cwd=run_copy), str(plan_path.resolve()), expected)
    assert not (run_copy / "x").exists() and not (run_copy / "runs" / "x").exists()


def test_damaged_jobs_journals_are_read_around(run_copy: Path) -> None:
    jobs = run_copy / "runs/demo/stages/t_source/jobs.jsonl"
    with jobs.open("ab") as f:
        f.write(b'\xff\xfe not utf-8\n[1, 2]\n"a string"\n{"event": "launch", "task": "../x", "pid": 1}\n')
    result = run_cli("status", "runs/demo", "--json", cwd=run_copy)
    assert result.returncode == 0, result.stderr
    assert {s["state"] for s in result.json()["stages"]} == {"COMPLETED"}


def test_a_torn_last_line_costs_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    append_jsonl(path, {"n": 1})
    with path.open("ab") as f:
        f.write(b'{"n": 2, "torn')  # a crash mid-write
    append_jsonl(path, {"n": 3})
    append_jsonl(path, {"n": 4})
    assert read_jsonl(path) == [{"n": 1}, {"n": 3}, {"n": 4}]


def test_odd_task_arguments_follow_one_parse_rule(run_copy: Path) -> None:
    _refused(run_cli("logs", "runs/demo", "--stage", "t_source", "--task", "²", cwd=run_copy), "--task", "'²'")
    _refused(run_cli("logs", "runs/demo", "--stage", "t_source", "--task", "-1", cwd=run_copy), "--task")
    padded = run_cli("logs", "runs/demo", "--stage", "t_source", "--task", "01", cwd=run_copy)
    assert padded.returncode == 0, padded.stderr
    assert "source task 1 of 2" in padded.stdout and "task-1.log" in padded.stderr


def test_report_over_a_file_and_a_symlink_loop_are_clear_refusals(run_copy: Path) -> None:
    (run_copy / "runs/demo/report").write_text("not a directory")
    _refused(run_cli("report", "runs/demo", cwd=run_copy), "report", "is a file")
    os.symlink("loop-b", run_copy / "loop-a")
    os.symlink("loop-a", run_copy / "loop-b")
    _refused(run_cli("status", "loop-a", cwd=run_copy), "loop-a")


def test_a_done_json_for_another_key_is_one_consistent_failure(run_copy: Path) -> None:
    done = run_copy / "runs/demo/stages/t_source/done.json"
    record = json.loads(done.read_text())
    done.chmod(0o644)
    done.write_text(json.dumps({**record, "key": "0000000000000000"}))
    result = run_cli("status", "runs/demo", "--json", cwd=run_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    source = next(s for s in result.json()["stages"] if s["name"] == "t_source")
    assert source["state"] == "FAILED" and "0000000000000000" in source["error"] and "--force" in source["error"]
    launches = (run_copy / "runs/demo/stages/t_source/jobs.jsonl").read_text().count('"launch"')
    repaired = run_cli("rerun", "runs/demo", "--stage", "t_source", "--force", cwd=run_copy)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert set(_states(run_copy).values()) == {"COMPLETED"}
    # every task was redone (the foreign outputs are not merged under this plan's key)
    stage_dir = run_copy / "runs/demo/stages/t_source"
    assert stage_dir.joinpath("jobs.jsonl").read_text().count('"launch"') == launches + 3  # 2 tasks + merge


def test_a_key_read_from_stage_json_never_moves_a_stage_outside_the_run(run_copy: Path) -> None:
    stage_json = run_copy / "runs/demo/stages/t_after/stage.json"
    stage_json.write_text(json.dumps({**json.loads(stage_json.read_text()), "key": "/../../../escaped"}))
    run = RunDir(run_copy / "runs/demo")
    record = next(r for r in json.loads(run.plan_json.read_text())["stages"] if r["name"] == "t_after")
    run.prepare_stage("t_after", record["key"], record["config"], record)  # stage.json's key differs: superseded
    assert not list(run_copy.parent.rglob("escaped*"))
    (moved,) = (run_copy / "runs/demo/superseded").iterdir()
    assert moved.name.startswith("t_after.unknown.")


def test_a_superseded_stage_keeps_its_outputs_read_only(run_copy: Path) -> None:
    result = run_cli("rerun", "runs/demo", "--stage", "t_after", cwd=run_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    (old,) = (run_copy / "runs/demo/superseded").iterdir()
    outputs = [old / "out", *(old / "out").iterdir()]
    assert len(outputs) > 1
    for path in outputs:
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), path
