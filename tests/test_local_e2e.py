"""End to end on the embedded local executor, through the real CLI, with test-only stages."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, cli_env, run_cli, write_pipeline


def _pipeline(tmp_path: Path, **source: Any) -> dict[str, Any]:
    return {
        "run": {"name": "demo", "seed": 7},
        "executor": "local",
        "local": {"parallelism": 2},
        "stages": {"t_source": {"n_tasks": 3, "value": 2, **source}, "t_sink": {"scale": 10}, "t_after": {}},
    }


def _status(tmp_path: Path) -> dict[str, Any]:
    result = run_cli("status", "runs/demo", "--json", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr
    return result.json()


def _states(tmp_path: Path) -> dict[str, str]:
    return {s["name"]: s["state"] for s in _status(tmp_path)["stages"]}


def _launches(run_dir: Path, stage: str) -> list[str]:
    lines = (run_dir / "stages" / stage / "jobs.jsonl").read_text().splitlines()
    return [json.loads(line)["task"] for line in lines if json.loads(line)["event"] == "launch"]


def _wait_for(predicate, timeout: float = 60.0, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def test_success_records_outputs_markers_and_provenance(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path))
    result = run_cli("p.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    run_dir = tmp_path / "runs" / "demo"
    final = json.loads((run_dir / "stages/t_after/out/final.json").read_text())
    assert final == {"final": (2 + 4 + 6) * 10 + 1}
    for i in range(3):
        marker = json.loads((run_dir / f"stages/t_source/tasks/{i}.done").read_text())
        assert marker["index"] == i
    done = json.loads((run_dir / "stages/t_source/done.json").read_text())
    plan = json.loads((run_dir / "plan.json").read_text())
    keys = {s["name"]: s["key"] for s in plan["stages"]}
    assert done["key"] == keys["t_source"]
    out_dir = run_dir / "stages/t_source/out"
    assert not out_dir.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert not (out_dir / "total.json").stat().st_mode & stat.S_IWUSR
    assert (run_dir / "pipeline.yaml").read_text() == (tmp_path / "p.yaml").read_text()
    assert json.loads((run_dir / "stages/t_sink/config.json").read_text()) == {
        "scale": 10,
        "sleep_s": 0.0,
        "require_env": None,
        "inputs": {},
    }
    snapshot = Path(plan["code"]["snapshot"])
    assert snapshot.parent == run_dir / "code"
    assert (snapshot / "pipeline" / "worker.py").read_text() == (REPO_ROOT / "pipeline" / "worker.py").read_text()
    assert "dirty" in plan["code"] and "commit" in plan["code"]
    assert plan["seed"] == 7 and "python" in plan["versions"]
    status = _status(tmp_path)
    assert status["run_id"] == "demo" and status["executor"] == "local"
    by_name = {s["name"]: s for s in status["stages"]}
    assert by_name["t_source"]["state"] == "COMPLETED"
    assert by_name["t_source"]["tasks"] == {"total": 3, "done": 3, "failed": 0, "running": 0}
    assert by_name["t_source"]["log_dir"].endswith("stages/t_source/logs")
    assert by_name["t_source"]["job_ids"]
    assert "start (pid" in (run_dir / "stages/t_source/logs/task-0.log").read_text()
    no_tmp = [p for p in run_dir.rglob("*.tmp")]
    assert no_tmp == []


def test_second_run_is_cached_and_runs_nothing(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path))
    assert run_cli("p.yaml", cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "runs" / "demo"
    before = {s: _launches(run_dir, s) for s in ("t_source", "t_sink", "t_after")}
    again = run_cli("run", "p.yaml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing to run" in again.stdout
    assert {s: _launches(run_dir, s) for s in before} == before
    assert set(_states(tmp_path).values()) == {"CACHED"}


def test_changing_one_stage_reruns_it_and_its_descendants_only(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path))
    assert run_cli("p.yaml", cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "runs" / "demo"
    source_launches = _launches(run_dir, "t_source")
    data = _pipeline(tmp_path)
    data["stages"]["t_sink"]["scale"] = 100
    write_pipeline(tmp_path / "p.yaml", data)
    result = run_cli("p.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _launches(run_dir, "t_source") == source_launches
    assert _launches(run_dir, "t_sink") == ["0"]
    assert json.loads((run_dir / "stages/t_after/out/final.json").read_text()) == {"final": 1201}
    assert _states(tmp_path) == {"t_source": "CACHED", "t_sink": "COMPLETED", "t_after": "COMPLETED"}
    superseded = sorted(p.name.split(".")[0] for p in (run_dir / "superseded").iterdir())
    assert superseded == ["t_after", "t_sink"]


def test_failed_task_stops_downstream_and_rerun_redoes_only_it(tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path, fail_task=1, fail_unless_exists=str(fixed)))
    result = run_cli("p.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    run_dir = tmp_path / "runs" / "demo"
    status = _status(tmp_path)
    by_name = {s["name"]: s for s in status["stages"]}
    source = by_name["t_source"]
    assert source["state"] == "FAILED"
    assert source["tasks"]["failed"] == 1 and source["tasks"]["done"] == 2
    assert source["failed_tasks"] == ["1"]
    assert "task 1 failed" in source["error"]
    assert "planted failure in task 1" in source["error"]
    assert str(run_dir / "stages/t_source/logs/task-1.log") in source["error"]
    assert by_name["t_sink"]["state"] == "UPSTREAM_FAILED"
    assert by_name["t_after"]["state"] == "UPSTREAM_FAILED"
    assert not (run_dir / "stages/t_sink/jobs.jsonl").exists()

    human = run_cli("status", "demo", cwd=tmp_path)
    assert human.returncode == 1 and "FAILED" in human.stdout and "task-1.log" in human.stdout
    logs = run_cli("logs", "demo", "--stage", "t_source", "--task", "1", cwd=tmp_path)
    assert logs.returncode == 0 and "planted failure in task 1" in logs.stdout

    markers = {i: (run_dir / f"stages/t_source/tasks/{i}.done").stat().st_mtime_ns for i in (0, 2)}
    fixed.write_text("yes")
    rerun = run_cli("rerun", "demo", "--stage", "t_source", "--downstream", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    assert _launches(run_dir, "t_source") == ["0", "1", "2", "1", "merge"]
    assert {i: (run_dir / f"stages/t_source/tasks/{i}.done").stat().st_mtime_ns for i in (0, 2)} == markers
    assert _states(tmp_path) == {"t_source": "COMPLETED", "t_sink": "COMPLETED", "t_after": "COMPLETED"}
    assert json.loads((run_dir / "stages/t_after/out/final.json").read_text()) == {"final": 121}


def test_rerun_of_a_done_stage_redoes_it_and_keeps_the_old_one(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path))
    assert run_cli("p.yaml", cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "runs" / "demo"
    result = run_cli("rerun", "demo", "--stage", "t_sink", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _launches(run_dir, "t_sink") == ["0"]  # a fresh stage dir: one launch since
    assert [p.name.split(".")[0] for p in (run_dir / "superseded").iterdir()] == ["t_sink"]
    assert _states(tmp_path)["t_after"] == "COMPLETED"


def test_rerun_revalidates_before_moving_a_finished_stage_aside(tmp_path: Path) -> None:
    """A check that depends on the shell (an API key) fails the rerun with exit 2; the finished stage stays."""
    data = _pipeline(tmp_path)
    data["stages"]["t_sink"]["require_env"] = "T_SINK_TOKEN"
    write_pipeline(tmp_path / "p.yaml", data)
    assert run_cli("p.yaml", cwd=tmp_path, env={"T_SINK_TOKEN": "x"}).returncode == 0
    refused = run_cli("rerun", "demo", "--stage", "t_sink", cwd=tmp_path)
    assert refused.returncode == 2 and "T_SINK_TOKEN" in refused.stderr and "Traceback" not in refused.stderr
    assert _states(tmp_path)["t_sink"] == "COMPLETED"
    assert not (tmp_path / "runs/demo/superseded").exists()
    assert run_cli("rerun", "demo", "--stage", "t_sink", cwd=tmp_path, env={"T_SINK_TOKEN": "x"}).returncode == 0


def test_rerun_keeps_the_stage_journal_and_force_drops_it(tmp_path: Path) -> None:
    """An LLM stage's answers are paid for: a same-key redo copies its journal back (the superseded copy stays
    whole), so nothing is asked twice; --force starts from an empty journal."""
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path))
    assert run_cli("p.yaml", cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "runs" / "demo"
    journal = run_dir / "stages/t_sink/out/journal/answers.jsonl"
    first = journal.read_text()
    assert run_cli("rerun", "demo", "--stage", "t_sink", cwd=tmp_path).returncode == 0
    assert _launches(run_dir, "t_sink") == ["0"] and journal.read_text() == first  # reused, not paid again
    (old,) = (run_dir / "superseded").iterdir()
    assert (old / "out/journal/answers.jsonl").read_text() == first and (old / "out/result.json").exists()
    assert not list(journal.parent.glob(".*tmp"))
    forced = run_cli("rerun", "demo", "--stage", "t_sink", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert journal.read_text() != first  # paid again by the new task
    assert _states(tmp_path)["t_sink"] == "COMPLETED"


def test_cancel_from_another_shell(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path, sleep_s=60))
    result = run_cli("run", "p.yaml", "--no-wait", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "python run.py status" in result.stdout
    _wait_for(lambda: _states(tmp_path)["t_source"] == "RUNNING")
    status = _status(tmp_path)
    assert status["stages"][0]["tasks"]["running"] == 2  # parallelism 2
    assert _states(tmp_path)["t_sink"] == "PENDING"
    refused = run_cli("p.yaml", cwd=tmp_path)
    assert refused.returncode == 2 and "still has live stages" in refused.stderr
    pids = [json.loads(p.read_text())["pid"] for p in (tmp_path / "runs/demo/stages/t_source/tasks").glob("*.pid")]
    cancelled = run_cli("cancel", "demo", cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "t_source:" in cancelled.stdout
    _wait_for(lambda: _states(tmp_path)["t_source"] == "CANCELLED", timeout=20)
    assert _states(tmp_path) == {"t_source": "CANCELLED", "t_sink": "CANCELLED", "t_after": "CANCELLED"}
    for pid in pids:
        _wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _is_zombie(pid), timeout=10)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_ctrl_c_stops_children_and_records_cancelled(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path, sleep_s=60))
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "run.py"), "p.yaml"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: (tmp_path / "runs/demo/plan.json").exists() and _states(tmp_path)["t_source"] == "RUNNING")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "Traceback" not in stderr
    assert _states(tmp_path)["t_source"] == "CANCELLED"
    assert not list((tmp_path / "runs/demo/stages/t_source/tasks").glob("*.pid"))


def test_cancel_one_stage_leaves_the_rest(tmp_path: Path) -> None:
    data = _pipeline(tmp_path, sleep_s=60)
    write_pipeline(tmp_path / "p.yaml", data)
    assert run_cli("run", "p.yaml", "--no-wait", cwd=tmp_path).returncode == 0
    _wait_for(lambda: _states(tmp_path)["t_source"] == "RUNNING")
    result = run_cli("cancel", "demo", "--stage", "t_source", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _wait_for(lambda: _states(tmp_path)["t_sink"] == "UPSTREAM_FAILED", timeout=20)
    assert _states(tmp_path)["t_source"] == "CANCELLED"


def test_only_runs_selected_stages(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path))
    refused = run_cli("p.yaml", "--only", "t_sink", cwd=tmp_path)
    assert refused.returncode == 2 and "upstream stage 't_source' is not done" in refused.stderr
    result = run_cli("p.yaml", "--only", "t_source", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    states = _states(tmp_path)
    assert states["t_source"] == "COMPLETED" and states["t_sink"] == "NOT_STARTED"


def test_plan_creates_nothing_and_shows_cache(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path))
    result = run_cli("plan", "p.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "t_source" in result.stdout and "WILL RUN" in result.stdout
    assert not (tmp_path / "runs").exists()
    assert run_cli("p.yaml", cwd=tmp_path).returncode == 0
    plan = run_cli("plan", "p.yaml", "--json", cwd=tmp_path).json()
    assert all(stage["cached"] for stage in plan["stages"])
    assert plan["stages"][0]["resources"]["mem_gb"] > 0


BAD_INPUTS = {
    "missing_file": None,
    "yaml_syntax": "run: {name: demo\n",
    "unknown_key": "run: {name: demo, colour: red}\n",
    "wrong_type": "run: {name: demo, seed: lots}\n",
    "unknown_stage": "run: {name: demo}\nstages: {nope: {}}\n",
    "cycle": "run: {name: demo}\nstages: {t_cycle_a: {}, t_cycle_b: {}}\n",
    "missing_upstream": "run: {name: demo}\nstages: {t_sink: {}}\n",
    "out_dir_unwritable": "run: {name: demo, out_dir: blocker/runs}\nstages: {t_source: {}}\n",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_without_traceback_or_run_dir(tmp_path: Path, case: str) -> None:
    (tmp_path / "blocker").write_text("a file where a directory should be")
    text = BAD_INPUTS[case]
    if text is not None:
        (tmp_path / "p.yaml").write_text(text)
    result = run_cli("p.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error:")
    assert "Traceback" not in result.stderr
    assert "p.yaml" in result.stderr or case in ("cycle", "missing_upstream", "out_dir_unwritable")
    assert not (tmp_path / "runs").exists()


def test_unknown_run_and_stage_are_user_errors(tmp_path: Path) -> None:
    assert run_cli("status", "nope", cwd=tmp_path).returncode == 2
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path))
    assert run_cli("p.yaml", cwd=tmp_path).returncode == 0
    for args in (
        ("rerun", "demo", "--stage", "nope"),
        ("logs", "demo", "--stage", "nope"),
        ("cancel", "demo", "--stage", "x"),
    ):
        result = run_cli(*args, cwd=tmp_path)
        assert (result.returncode == 2 and "nope" in result.stderr) or "'x'" in result.stderr


def test_schema_command_prints_json_schema(tmp_path: Path) -> None:
    result = run_cli("schema", cwd=tmp_path)
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "PipelineConfig"
    assert "t_source" in schema["$defs"]["StagesSection"]["properties"]


def test_console_script_matches_run_py(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "spd-pipeline"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=cli_env(), cwd=tmp_path)
    assert result.returncode == 0 and "rerun" in result.stdout


def test_no_worker_outlives_a_finished_run(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path))
    assert run_cli("p.yaml", cwd=tmp_path).returncode == 0
    assert not list((tmp_path / "runs/demo").rglob("*.pid"))
    assert os.path.exists(tmp_path / "runs/demo/driver.json")


def test_corrupt_record_is_a_user_error_not_a_traceback(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path))
    assert run_cli("p.yaml", "--only", "t_source", cwd=tmp_path).returncode == 0
    (tmp_path / "runs/demo/plan.json").write_text("{")
    result = run_cli("status", "demo", cwd=tmp_path)
    assert result.returncode == 2 and "plan.json: not valid JSON" in result.stderr and "Traceback" not in result.stderr


def test_a_second_invocation_is_refused_while_the_first_holds_the_run(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path, sleep_s=30))
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "run.py"), "p.yaml"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: (tmp_path / "runs/demo/plan.json").exists() and _states(tmp_path)["t_source"] == "RUNNING")
        second = run_cli("rerun", "demo", "--stage", "t_after", cwd=tmp_path)
        assert second.returncode == 2
        # a waiting local run holds run_lock for its whole span, so the lock refuses before any liveness check
        assert "another `run` or `rerun` of 'demo' is in progress" in second.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_status_watch_and_logs_follow_return_when_the_run_ends(tmp_path: Path) -> None:
    """Started right after a --no-wait submit: both keep refreshing while tasks sleep and return once it is done."""
    write_pipeline(tmp_path / "p.yaml", _pipeline(tmp_path, sleep_s=3))
    assert run_cli("run", "p.yaml", "--no-wait", cwd=tmp_path).returncode == 0
    follow = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "run.py"), "logs", "demo", "--stage", "t_source", "--task", "2", "--follow"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watch = run_cli("status", "demo", "--watch", "--interval", "1", cwd=tmp_path, timeout=120)
    assert watch.returncode == 0, watch.stderr
    assert _states(tmp_path) == {"t_source": "COMPLETED", "t_sink": "COMPLETED", "t_after": "COMPLETED"}
    assert watch.stdout.count("COMPLETED") >= 3  # the last table drawn shows every stage done
    stdout, stderr = follow.communicate(timeout=60)
    assert follow.returncode == 0, stderr
    assert "source task 2 of 3" in stdout and "following" in stderr
    refused = run_cli("status", "demo", "--watch", "--json", cwd=tmp_path)
    assert refused.returncode == 2 and "--watch" in refused.stderr
    no_such_task = run_cli("logs", "demo", "--stage", "t_source", "--task", "7", "--follow", cwd=tmp_path)
    assert no_such_task.returncode == 2 and "tasks 0..2" in no_such_task.stderr
