"""The SLURM executor: pure unit tests of its parsing and mapping, then end-to-end tests marked
`slurm` against the real single-node cluster of scripts/local_slurm.sh (profile
slurm_configs/local.yaml, test-only stages from testkit/stages_for_tests.py, cluster helpers from
testkit/slurm_support.py).

Without `sbatch` the cluster tests are skipped, except under CI=true, where they fail: CI must
never silently lose them. Every run gets a unique run id, so job names never collide with jobs
left over from another session, and each test scancels its jobs when it ends.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline import orchestrator
from pipeline.dag import Plan, PlannedStage
from pipeline.errors import UserError
from pipeline.executors import slurm as slurm_executor
from pipeline.executors.base import TaskView
from pipeline.executors.slurm import (
    JobRef,
    SchedulerRow,
    SlurmExecutor,
    dependency_spec,
    expand_job_id,
    parse_elapsed,
    parse_sacct,
    parse_squeue,
    read_stage_jobs,
    sbatch_parameters,
    task_view,
    worker_setup,
)
from pipeline.resources import Resources
from pipeline.runs import RunDir, now_iso
from pipeline.status import StageStatus
from pipeline.worker import StageTask, run_stage_task
from testkit.slurm_support import (
    cancel_names,
    job_known_to_controller,
    slurm_missing,
    squeue_ids,
    wait_for,
)
from tests.conftest import PLUGIN, REPO_ROOT, CliResult, cli_env, run_cli, write_pipeline

TIMEOUT_S = 90  # generous bound for a few tiny jobs on a 2-CPU node
SETTLED = ("COMPLETED", "FAILED", "CANCELLED")  # stage states that only a rerun changes (UPSTREAM_FAILED may not)


# --- pure unit tests (no cluster) -----------------------------------------------------------
def test_pending_array_rows_expand_to_task_ids() -> None:
    assert expand_job_id("11_[1-3%2]") == ["11_1", "11_2", "11_3"]
    assert expand_job_id("11_[0,4-5]") == ["11_0", "11_4", "11_5"]
    assert expand_job_id("11_7") == ["11_7"]
    assert expand_job_id("12") == ["12"]


def test_sacct_rows_are_parsed_by_job_id() -> None:
    text = "\n".join(
        [
            "11_[2-3%1]|r.s|PENDING|JobArrayTaskLimit|00:00:00|0:0",
            "11_0|r.s|COMPLETED|None|00:00:02|0:0",
            "11_0.batch|batch|COMPLETED||00:00:02|0:0",
            "12|r.s.merge|CANCELLED by 0|None|1-02:03:04|0:0",
        ]
    )
    rows = parse_sacct(text)
    assert set(rows) == {"11_0", "11_2", "11_3", "12"}
    assert rows["11_3"].state == "PENDING" and rows["11_3"].reason == "JobArrayTaskLimit"
    assert rows["12"].state == "CANCELLED"
    assert rows["12"].elapsed_s == 86400 + 2 * 3600 + 3 * 60 + 4
    assert parse_squeue("13_1|r.s|RUNNING|None\n")["13_1"].state == "RUNNING"
    assert parse_elapsed("05:06.5") == 306.5 and parse_elapsed("garbage") is None


@pytest.mark.parametrize(
    ("state", "reason", "expected", "says"),
    [
        ("PENDING", "Dependency", "PENDING", ""),
        ("PENDING", "DependencyNeverSatisfied", "UPSTREAM_FAILED", "never be satisfied"),
        ("REQUEUED", "None", "PENDING", ""),
        ("RUNNING", "None", "RUNNING", ""),
        ("COMPLETING", "None", "RUNNING", ""),
        ("FAILED", "None", "FAILED", "exit code 1:0"),
        ("TIMEOUT", "None", "FAILED", "time limit"),
        ("OUT_OF_MEMORY", "None", "FAILED", "out of memory"),
        ("NODE_FAIL", "None", "FAILED", "NODE_FAIL"),
        ("CANCELLED", "None", "CANCELLED", "cancelled"),
        ("COMPLETED", "None", "FAILED", "completed but wrote no marker"),
    ],
)
def test_scheduler_states_map_to_task_views(state: str, reason: str, expected: str, says: str) -> None:
    view = task_view(JobRef("5_1", "r.s", now_iso()), SchedulerRow("5_1", "r.s", state, reason, 1.0, "1:0"))
    assert view == TaskView(expected, view.reason, "5_1")  # type: ignore[arg-type]
    assert says in view.reason


def test_a_job_no_tool_reports_is_pending_when_young_and_failed_when_old() -> None:
    assert task_view(JobRef("9", "r.s", now_iso()), None).state == "PENDING"
    assert task_view(JobRef("9", "r.s", "2020-01-01T00:00:00+00:00"), None).state == "FAILED"


def test_sbatch_parameters_come_from_resources_and_always_kill_on_invalid_dependency() -> None:
    res = Resources(
        partition="gpu",
        account="lab",
        qos="high",
        cpus_per_task=4,
        mem_gb=0.5,
        time_min=7,
        gpus_per_node=0,
        array_parallelism=3,
        constraint="a100",
        extra_sbatch={"--mail_type": "FAIL"},
    )
    params = sbatch_parameters(res, "run.stage", "afterok:4:5")
    assert params["job_name"] == "run.stage" and params["dependency"] == "afterok:4:5"
    assert params["partition"] == "gpu" and params["account"] == "lab" and params["qos"] == "high"
    assert params["cpus_per_task"] == 4 and params["mem"] == "512M" and params["time"] == 7
    assert params["array_parallelism"] == 3 and params["constraint"] == "a100"
    assert "gpus_per_node" not in params  # no GRES request for CPU stages
    assert params["additional_parameters"] == {"kill-on-invalid-dep": "yes", "mail-type": "FAIL"}
    for owned in ("kill-on-invalid-dep", "dependency", "job_name", "output"):  # refused when the file is read
        with pytest.raises(ValidationError, match="set by the SLURM executor"):
            Resources(extra_sbatch={owned: "x"})
    assert sbatch_parameters(Resources(gpus_per_node=2), "n", None)["gpus_per_node"] == 2
    assert "dependency" not in sbatch_parameters(Resources(), "n", None)
    assert dependency_spec(["12_3", "12_4", "9"]) == "afterok:9:12"


def _sharded_stage(num_tasks: int) -> PlannedStage:
    """A planned stage 's' with num_tasks array tasks and a merge, default resources."""
    return PlannedStage(
        name="s",
        module="m",
        config={},
        upstreams=(),
        external={},
        key="k",
        seed=0,
        num_tasks=num_tasks,
        resources=Resources(),
        merge_resources=Resources(),
    )


def test_huge_stages_are_split_into_arrays_below_max_array_size_and_the_merge_waits_for_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planned = _sharded_stage(5)
    calls: list[tuple[list[str], str, str | None]] = []

    def fake_submit(
        run: RunDir, p: PlannedStage, tasks: list[StageTask], kind: str, attempt: int, dep: str | None
    ) -> str:
        calls.append(([t.label for t in tasks], kind, dep))
        return str(100 + len(calls))

    monkeypatch.setattr(slurm_executor, "MAX_ARRAY_TASKS", 2)
    executor = SlurmExecutor(snapshot=tmp_path)
    monkeypatch.setattr(executor, "_submit", fake_submit)
    final = executor.submit_stage(RunDir(tmp_path / "run"), Plan({"s": planned}), "s", [0, 1, 2, 3, 4], ["7"])
    assert calls == [
        (["0", "1"], "tasks0", "afterok:7"),
        (["2", "3"], "tasks1", "afterok:7"),
        (["4"], "tasks2", "afterok:7"),
        (["merge"], "merge", "afterok:101:102:103"),
    ]
    assert final == "104"


class _FakeSbatch:
    """Stands in for submitit's executor: queues arrays as job 41, refuses merge jobs when told to."""

    def __init__(self, folder: Path, params: dict[str, Any], refuse: str) -> None:
        self.folder, self.refused = folder, params["job_name"].endswith(refuse)

    def map_array(self, fn: Callable[..., Any], tasks: list[StageTask]) -> list[SimpleNamespace]:
        if self.refused:
            raise RuntimeError("sbatch: error: invalid partition specified")
        return [
            SimpleNamespace(job_id=f"41_{i}", paths=SimpleNamespace(stdout=self.folder / f"41_{i}.out"))
            for i in range(len(tasks))
        ]


@pytest.mark.parametrize(("refuse", "rolled_back"), [(".merge", [["s"]]), (".s", [])])
def test_a_refused_sbatch_cancels_whatever_the_launch_queued_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refuse: str, rolled_back: list[list[str]]
) -> None:
    """The first stage's array queued, then its merge job refused: the array must not stay queued
    alone. When the very first sbatch is refused this launch queued nothing, so nothing is
    cancelled, whatever an earlier attempt (job 40) left in jobs.jsonl."""
    planned = _sharded_stage(2)
    run = RunDir(tmp_path / "run")
    earlier = {"executor": "slurm", "job_name": "run.s", "submission": "1-tasks", "attempt": 1, "tasks": ["0"]}
    run.record_job("s", {**earlier, "event": "submitted", "job_id": "40", "task_jobs": {"0": "40"}})
    executor = SlurmExecutor(snapshot=tmp_path)
    monkeypatch.setattr(executor, "_executor", lambda folder, params: _FakeSbatch(folder, params, refuse))
    cancelled: list[list[str]] = []
    monkeypatch.setattr(executor, "cancel", lambda run, plan, stages: cancelled.append(list(stages)) or [])
    with pytest.raises(UserError, match="sbatch refused stage 's'"):
        executor.launch(run, Plan({"s": planned}), {"s": [0, 1]}, wait=False)
    assert cancelled == rolled_back
    assert read_stage_jobs(run, "s").job_ids == (["40", "41"] if rolled_back else ["40"])


def test_worker_setup_puts_the_snapshot_before_the_callers_path(tmp_path: Path) -> None:
    line = worker_setup(tmp_path / "code" / "abc", tmp_path / "work dir")[0]
    env = {**os.environ, "PYTHONPATH": "/caller/path"}
    out = subprocess.run(["bash", "-c", f"{line}; echo $PYTHONPATH"], env=env, capture_output=True, text=True)
    assert out.stdout.strip().split(":") == [str(tmp_path / "code" / "abc"), "/caller/path", str(tmp_path / "work dir")]


def test_latest_attempt_wins_and_a_crash_after_sbatch_loses_no_job(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    t = now_iso()
    base = {"executor": "slurm", "job_name": "run.s", "time": t}
    run.record_job("s", {**base, "event": "submitting", "submission": "1-tasks", "attempt": 1, "tasks": ["0", "1"]})
    run.record_job(
        "s",
        {
            **base,
            "event": "submitted",
            "submission": "1-tasks",
            "attempt": 1,
            "tasks": ["0", "1"],
            "job_id": "40",
            "task_jobs": {"0": "40_0", "1": "40_1"},
        },
    )
    # attempt 2 reran task 1; the process died between sbatch and its `submitted` record.
    (run.stage_dir("s") / "slurm" / "2-tasks" / "57").mkdir(parents=True)
    record = {**base, "event": "submitting", "submission": "2-tasks", "attempt": 2, "tasks": ["1"]}
    run.record_job("s", {**record, "folder": "slurm/2-tasks"})
    jobs = read_stage_jobs(run, "s")
    assert {k: v.job_id for k, v in jobs.latest.items()} == {"0": "40_0", "1": "57"}
    assert jobs.job_ids == ["40", "57"]


# --- the real cluster -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    why = slurm_missing()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the SLURM test cluster is not usable: {why}")
    pytest.skip(f"no SLURM cluster: {why}")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """CLI environment with the test-only stages as a plugin (in-process too)."""
    monkeypatch.setenv("SPD_PIPELINE_PLUGINS", PLUGIN)
    return {"SPD_PIPELINE_PLUGINS": PLUGIN}


@pytest.fixture
def run_id(request: pytest.FixtureRequest) -> Iterator[str]:
    """A run id unique to this test session; its jobs are scancelled when the test ends."""
    rid = f"{request.node.name[5:25].strip('_')}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")
    yield rid
    names = [f"{rid}.{s}{m}" for s in ("t_source", "t_sink", "t_after", "t_where", "t_crash") for m in ("", ".merge")]
    cancel_names(names)


def slurm(test: Callable[..., None]) -> Callable[..., None]:
    """Marks a test `slurm` and gives it the cluster check (skip, or fail under CI=true)."""
    return pytest.mark.slurm(pytest.mark.usefixtures("slurm_cluster")(test))


def pipeline_file(tmp_path: Path, run_id: str, stages: dict[str, Any], resources: dict[str, Any] | None = None) -> Path:
    data = {
        "run": {"name": run_id, "out_dir": str(tmp_path / "runs")},
        "executor": "slurm",
        "slurm": {"profile": "local", "resources": resources or {}},
        "stages": stages,
    }
    return write_pipeline(tmp_path / "pipeline.yaml", data)


def stage_states(run: RunDir) -> dict[str, StageStatus]:
    return {s.name: s for s in orchestrator.status(run).stages}


def wait_states(run: RunDir, expected: dict[str, str], timeout: float = TIMEOUT_S) -> dict[str, StageStatus]:
    """Poll status (in-process, same code as the CLI) until every named stage is in its state."""

    def reached() -> dict[str, StageStatus] | None:
        states = stage_states(run)
        wrong = {k: (states[k].state, states[k].error) for k, v in expected.items() if states[k].state != v}
        if any(state in SETTLED for state, _ in wrong.values()):  # no need to wait out the timeout
            raise AssertionError(f"expected {expected}; but {wrong}")
        return None if wrong else states

    try:
        return wait_for(reached, timeout, what=f"states {expected}")  # type: ignore[return-value]
    except TimeoutError:
        seen = {k: (v.state, v.error) for k, v in stage_states(run).items()}
        raise AssertionError(f"expected {expected}; status says {seen}") from None


def wait_queue_empty(run: RunDir, stages: list[str], timeout: float = TIMEOUT_S) -> None:
    names = [f"{run.run_id}.{s}{m}" for s in stages for m in ("", ".merge")]
    wait_for(lambda: not squeue_ids(names), timeout, what=f"no queued jobs named {names}")


def submitted(run: RunDir, stage: str) -> list[dict[str, Any]]:
    return [r for r in run.job_records(stage) if r.get("event") == "submitted"]


def submission_script(run: RunDir, stage: str, record: dict[str, Any]) -> str:
    job = record["job_id"]
    return (run.stage_dir(stage) / record["folder"] / job / f"{job}_submission.sh").read_text()


def marker_state(run: RunDir, stage: str, index: int) -> tuple[bytes, int]:
    marker = run.task_marker(stage, index)
    return marker.read_bytes(), marker.stat().st_mtime_ns


def logs_of(run: RunDir, stage: str, task: str) -> str:
    return check(run_cli("logs", run.root, "--stage", stage, "--task", task, cwd=run.root.parent)).stdout


def check(result: CliResult, code: int = 0) -> CliResult:
    assert result.returncode == code, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


@slurm
def test_run_returns_at_once_and_dependencies_order_the_stages(tmp_path: Path, run_id: str, env: dict) -> None:
    path = pipeline_file(
        tmp_path,
        run_id,
        {"t_source": {"n_tasks": 3, "sleep_s": 0.3}, "t_sink": {}, "t_after": {}},
        {"t_source": {"array_parallelism": 2}},
    )
    started = time.monotonic()
    result = check(run_cli(path, cwd=tmp_path, env=env))
    assert time.monotonic() - started < 30
    assert "submitted (slurm)" in result.stdout
    assert f"python run.py status {tmp_path / 'runs' / run_id}" in result.stdout
    run = RunDir(tmp_path / "runs" / run_id)
    assert not run.done_json("t_after").exists()  # run did not wait for the jobs
    early = check(run_cli("status", run.root, "--json", cwd=tmp_path, env=env)).json()
    assert {s["name"]: s["state"] for s in early["stages"]}["t_after"] == "PENDING"

    wait_states(run, {"t_source": "COMPLETED", "t_sink": "COMPLETED", "t_after": "COMPLETED"})
    assert json.loads((run.out_dir("t_after") / "final.json").read_text()) == {"final": 7}

    # One array (0-based, parallelism cap) and one merge job after it; each stage after the last.
    events = [r["event"] for r in run.job_records("t_source")]
    assert events == ["submitting", "submitted", "submitting", "submitted"]
    array, merge = submitted(run, "t_source")
    assert array["array_size"] == 3 and array["task_jobs"] == {str(i): f"{array['job_id']}_{i}" for i in range(3)}
    assert merge["tasks"] == ["merge"] and merge["dependency"] == f"afterok:{array['job_id']}"
    assert merge["job_name"] == f"{run_id}.t_source.merge" and array["job_name"] == f"{run_id}.t_source"
    (sink,) = submitted(run, "t_sink")
    (after,) = submitted(run, "t_after")
    assert sink["dependency"] == f"afterok:{merge['job_id']}" and after["dependency"] == f"afterok:{sink['job_id']}"
    script = submission_script(run, "t_source", array)
    assert "#SBATCH --array=0-2%2" in script and "#SBATCH --kill-on-invalid-dep=yes" in script
    assert f"#SBATCH --dependency=afterok:{merge['job_id']}" in submission_script(run, "t_sink", sink)

    # Logs are reachable by task, also through the CLI.
    assert "source task 1 of 3" in logs_of(run, "t_source", "1")
    assert "merging" in logs_of(run, "t_source", "merge")

    # Once slurmctld has purged the jobs, status still has their run times (from sacct).
    wait_for(lambda: not job_known_to_controller(after["job_id"]), 30, what="t_after's job to be purged")
    final = check(run_cli("status", run.root, "--json", cwd=tmp_path, env=env)).json()
    by_name = {s["name"]: s for s in final["stages"]}
    assert all(s["state"] == "COMPLETED" for s in by_name.values())
    assert by_name["t_source"]["elapsed_s"] is not None and by_name["t_source"]["job_ids"][0] == merge["job_id"]


@slurm
def test_the_pickled_payload_is_only_the_stage_task(tmp_path: Path, run_id: str, env: dict) -> None:
    secrets = {"OPENAI_API_KEY": f"sk-test-{uuid.uuid4().hex}", "SPD_FAKE_API_KEY": f"fake-{uuid.uuid4().hex}"}
    path = pipeline_file(tmp_path, run_id, {"t_source": {"n_tasks": 2, "value": 5}, "t_sink": {"scale": 3}})
    check(run_cli(path, cwd=tmp_path, env={**env, **secrets}))
    run = RunDir(tmp_path / "runs" / run_id)

    def payload(stage: str, label: str) -> tuple[bytes, Any]:
        record = next(r for r in submitted(run, stage) if label in r["task_jobs"])
        job = record["task_jobs"][label]
        data = (run.stage_dir(stage) / record["folder"] / job / f"{job}_submitted.pkl").read_bytes()
        return data, pickle.loads(data)

    plan = Plan.from_records(run.read_plan()["stages"])
    for stage, label, index, other_field, upstreams in (
        ("t_source", "1", 1, "scale", {}),
        ("t_sink", "0", 0, "n_tasks", {"t_source": str(run.out_dir("t_source"))}),
    ):
        data, delayed = payload(stage, label)
        assert len(data) < 4096, f"{stage} payload is {len(data)} bytes"
        assert delayed.function is run_stage_task and delayed.kwargs == {}
        (task,) = delayed.args
        assert isinstance(task, StageTask)
        assert (task.stage, task.index, task.stage_dir) == (stage, index, str(run.stage_dir(stage)))
        assert task.config == plan.stages[stage].config and other_field not in task.config  # no other stage's
        assert task.upstream_dirs == upstreams
        assert not any(s.encode() in data for s in secrets.values())
    for path in [*run.root.rglob("*.sh"), *run.root.rglob("*.json*"), *run.root.rglob("*.pkl")]:
        text = path.read_bytes()
        assert not any(s.encode() in text for s in secrets.values()), f"a secret leaked into {path}"


@slurm
def test_a_failed_array_task_stops_downstream_and_rerun_redoes_only_it(tmp_path: Path, run_id: str, env: dict) -> None:
    fixed = tmp_path / "fixed"
    source = {"n_tasks": 3, "fail_task": 1, "fail_unless_exists": str(fixed)}
    path = pipeline_file(tmp_path, run_id, {"t_source": source, "t_sink": {}, "t_after": {}})
    check(run_cli(path, cwd=tmp_path, env=env))
    run = RunDir(tmp_path / "runs" / run_id)
    wait_states(run, {"t_source": "FAILED", "t_sink": "UPSTREAM_FAILED", "t_after": "UPSTREAM_FAILED"})
    wait_queue_empty(run, ["t_source", "t_sink", "t_after"])

    status = check(run_cli("status", run.root, "--json", cwd=tmp_path, env=env), code=1).json()
    src = next(s for s in status["stages"] if s["name"] == "t_source")
    assert src["state"] == "FAILED" and src["failed_tasks"] == ["1"] and src["tasks"]["done"] == 2
    log = run.task_log("t_source", "1")
    assert "planted failure in task 1" in src["error"] and str(log) in src["error"]
    assert "RuntimeError: planted failure in task 1" in log.read_text()
    assert "planted failure" in check(run_cli("logs", run.root, "--stage", "t_source", cwd=tmp_path)).stdout
    # The dependant never ran: no marker, no output, no log behind its log link.
    assert not run.task_marker("t_sink", 0).exists() and not (run.out_dir("t_sink") / "result.json").exists()
    assert not run.task_log("t_sink", "0").exists()

    kept = {i: marker_state(run, "t_source", i) for i in (0, 2)}
    fixed.touch()
    rerun = run_cli("rerun", run.root, "--stage", "t_source", "--downstream", "--wait", cwd=tmp_path, env=env)
    assert "COMPLETED" in check(rerun).stdout  # --wait followed the jobs to the end, then exit 0
    assert all(s.state == "COMPLETED" for s in stage_states(run).values())
    assert json.loads((run.out_dir("t_after") / "final.json").read_text()) == {"final": 7}
    assert kept == {i: marker_state(run, "t_source", i) for i in (0, 2)}  # untouched by the rerun
    second = [r for r in submitted(run, "t_source") if r["attempt"] == 2]
    assert [r["tasks"] for r in second] == [["1"], ["merge"]]  # only the failed task, then the merge
    assert second[0]["array_size"] is None and second[1]["dependency"] == f"afterok:{second[0]['job_id']}"
    (sink2,) = [r for r in submitted(run, "t_sink") if r["attempt"] == 2]
    assert sink2["dependency"] == f"afterok:{second[1]['job_id']}"
    assert "source task 1 of 3" in run.task_log("t_source", "1").read_text()  # the link follows the new attempt


@slurm
def test_cancel_stops_queued_and_running_jobs(tmp_path: Path, run_id: str, env: dict) -> None:
    path = pipeline_file(tmp_path, run_id, {"t_source": {"n_tasks": 2, "sleep_s": 120}, "t_sink": {}})
    check(run_cli(path, cwd=tmp_path, env=env))
    run = RunDir(tmp_path / "runs" / run_id)
    wait_states(run, {"t_source": "RUNNING", "t_sink": "PENDING"})

    result = check(run_cli("cancel", run.root, cwd=tmp_path, env=env))
    assert "t_source (job" in result.stdout and "t_sink (job" in result.stdout
    assert not squeue_ids([f"{run_id}.t_source", f"{run_id}.t_source.merge", f"{run_id}.t_sink"])
    states = wait_states(run, {"t_source": "CANCELLED", "t_sink": "CANCELLED"})
    assert states["t_source"].tasks.done == 0 and run.cancelled_json("t_source").exists()
    check(run_cli("status", run.root, cwd=tmp_path, env=env), code=1)


@slurm
def test_a_task_whose_upstream_job_was_purged_refuses_to_run(
    tmp_path: Path, run_id: str, env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = pipeline_file(tmp_path, run_id, {"t_source": {"n_tasks": 1, "fail_task": 0}, "t_sink": {}})
    check(run_cli(path, cwd=tmp_path, env=env))
    run = RunDir(tmp_path / "runs" / run_id)
    wait_states(run, {"t_source": "FAILED", "t_sink": "UPSTREAM_FAILED"})
    (source_job,) = [r["job_id"] for r in submitted(run, "t_source")]
    wait_for(lambda: not job_known_to_controller(source_job), 30, what=f"job {source_job} to be purged")

    # SLURM takes `afterok` on a purged (failed!) job as satisfied and starts the task at once:
    # only the worker's own check of the upstream's done.json stands between it and bad inputs.
    record = run.read_plan()
    plan = Plan.from_records(record["stages"])
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # the job must import the test stages
    executor = SlurmExecutor(snapshot=Path(record["code"]["snapshot"]))
    sink_job = executor.submit_stage(run, plan, "t_sink", [0], after=[source_job])
    wait_states(run, {"t_sink": "FAILED"})
    failure = json.loads(run.task_failed("t_sink", "0").read_text())
    assert failure["error"].startswith("UpstreamMissing") and "done.json missing" in failure["error"]
    assert not (run.out_dir("t_sink") / "result.json").exists()
    latest = submitted(run, "t_sink")[-1]
    assert latest["job_id"] == sink_job and latest["dependency"] == f"afterok:{source_job}"
    assert f"--dependency=afterok:{source_job}" in submission_script(run, "t_sink", latest)
    status = stage_states(run)["t_sink"]
    assert "done.json missing" in (status.error or "") and status.job_ids[0] == sink_job


@slurm
def test_a_worker_killed_without_a_record_is_failed_by_sacct_and_wait_exits_1(
    tmp_path: Path, run_id: str, env: dict
) -> None:
    path = pipeline_file(tmp_path, run_id, {"t_crash": {"exit_code": 3}})
    result = check(run_cli(path, "--wait", cwd=tmp_path, env=env, timeout=TIMEOUT_S), code=1)
    assert "t_crash" in result.stdout and "FAILED" in result.stdout
    run = RunDir(tmp_path / "runs" / run_id)
    assert run.failed_labels("t_crash") == []  # the worker had no chance to record anything
    (job,) = [r["job_id"] for r in submitted(run, "t_crash")]
    wait_for(lambda: not job_known_to_controller(job), 30, what=f"job {job} to be purged")

    status = check(run_cli("status", run.root, "--json", cwd=tmp_path, env=env), code=1).json()
    (crash,) = status["stages"]
    assert crash["state"] == "FAILED" and crash["failed_tasks"] == ["0"]
    assert f"job {job}" in crash["error"] and "exit code 3" in crash["error"]
    assert str(run.task_log("t_crash", "0")) in crash["error"]
    assert "crashing with exit code 3" in logs_of(run, "t_crash", "0")


@slurm
def test_queued_jobs_run_the_code_snapshot_not_the_edited_checkout(tmp_path: Path, run_id: str, env: dict) -> None:
    checkout = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("pipeline", "stages", "spd", "slurm_configs"):
        shutil.copytree(REPO_ROOT / name, checkout / name, ignore=ignore)
    (checkout / "testkit").mkdir()
    for name in ("__init__.py", "stages_for_tests.py"):
        shutil.copy2(REPO_ROOT / "testkit" / name, checkout / "testkit" / name)
    shutil.copy2(REPO_ROOT / "run.py", checkout / "run.py")
    path = pipeline_file(tmp_path, run_id, {"t_source": {"n_tasks": 1, "sleep_s": 2}, "t_where": {}})

    # Submit from inside the copy (cwd and PYTHONPATH point at it), then break the copy.
    proc = subprocess.run(
        [sys.executable, str(checkout / "run.py"), str(path)],
        cwd=checkout,
        env=cli_env({**env, "PYTHONPATH": str(checkout)}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for edited in (checkout / "stages" / "base.py", checkout / "pipeline" / "worker.py"):
        edited.write_text(edited.read_text() + "\nraise RuntimeError('the edited checkout was imported')\n")

    run = RunDir(tmp_path / "runs" / run_id)
    wait_states(run, {"t_source": "COMPLETED", "t_where": "COMPLETED"})
    snapshot = Path(run.read_plan()["code"]["snapshot"])
    assert snapshot.parent == run.code_dir
    where = json.loads((run.out_dir("t_where") / "where.json").read_text())
    assert where["pipeline_worker"] == str(snapshot / "pipeline" / "worker.py")
    assert where["stages_base"] == str(snapshot / "stages" / "base.py")
    assert where["cwd"] == str(checkout)  # it ran inside the edited checkout, yet imported the snapshot


@slurm
def test_a_job_submitted_just_before_a_crash_is_still_tracked_and_cancelled(
    tmp_path: Path, run_id: str, env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = pipeline_file(tmp_path, run_id, {"t_source": {"n_tasks": 2, "sleep_s": 120}})
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.chdir(tmp_path)
    real_record = RunDir.record_job

    def crash_after_sbatch(self: RunDir, stage: str, record: dict[str, Any]) -> None:
        if record.get("event") == "submitted":
            raise KeyboardInterrupt("killed between sbatch and the `submitted` record")
        real_record(self, stage, record)

    monkeypatch.setattr(RunDir, "record_job", crash_after_sbatch)
    with pytest.raises(KeyboardInterrupt):
        orchestrator.start_run(path)
    monkeypatch.setattr(RunDir, "record_job", real_record)

    run = RunDir(tmp_path / "runs" / run_id)
    assert [r["event"] for r in run.job_records("t_source")] == ["submitting"]
    states = wait_states(run, {"t_source": "RUNNING"})
    assert len(states["t_source"].job_ids) == 1  # recovered from the submission's folder
    result = check(run_cli("cancel", run.root, cwd=tmp_path, env=env))
    assert f"t_source (job {states['t_source'].job_ids[0]})" in result.stdout
    assert not squeue_ids([f"{run_id}.t_source"])
