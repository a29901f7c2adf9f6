"""One task as several processes (resources nodes x tasks_per_node > 1), as data-parallel decompose runs (issue 26).

The orchestrator's side, with the test-only stage `t_ranks` (no torch in its body): the plan refuses what cannot run
as several processes, the local executor starts the processes with torchrun, each finds its rank, rank 0 alone
records the task, every process logs to its own file, and one failing process fails the task with its rank named.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.executors.local import _stop_group, worker_command
from pipeline.executors.slurm import sbatch_parameters, worker_setup
from pipeline.ranks import RanksMissing, task_ranks
from pipeline.resources import Resources
from pipeline.runs import RunDir
from pipeline.worker import StageTask
from stages.base import TaskRanks
from stages.decompose import DecomposeConfig, check_world_size
from testkit.slurm_support import cancel_names
from tests.conftest import PLUGIN, run_cli, write_pipeline
from tests.test_slurm import (  # noqa: F401 (slurm_cluster: a fixture)
    check,
    slurm,
    slurm_cluster,
    submission_script,
    submitted,
    wait_queue_empty,
    wait_states,
)

TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500"}
SRUN_ENV = {
    "SLURM_PROCID": "3",
    "SLURM_NTASKS": "4",
    "SLURM_LOCALID": "1",
    "MASTER_ADDR": "node7",
    "MASTER_PORT": "21234",
}


def test_ranks_come_from_torchrun_or_srun_and_a_one_process_task_reads_nothing() -> None:
    assert task_ranks(2, TORCHRUN_ENV) == TaskRanks(1, 2, 1, "10.0.0.5", 29500)
    assert task_ranks(4, SRUN_ENV) == TaskRanks(3, 4, 1, "node7", 21234)
    # a local run inside an allocation of 4 tasks is still one process
    assert task_ranks(1, SRUN_ENV) == TaskRanks()
    # torchrun's variables win over an enclosing allocation's
    assert task_ranks(2, {**SRUN_ENV, **TORCHRUN_ENV}).rank == 1


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "neither torchrun's"),
        ({**TORCHRUN_ENV, "WORLD_SIZE": "3"}, "torchrun started 3"),
        ({k: v for k, v in SRUN_ENV.items() if k != "MASTER_PORT"}, "without MASTER_ADDR / MASTER_PORT"),
        ({**SRUN_ENV, "SLURM_NTASKS": "2", "SLURM_PROCID": "x"}, "SLURM_PROCID='x' is not an integer"),
    ],
)
def test_a_multi_process_task_without_its_launcher_says_what_is_missing(env: dict[str, str], says: str) -> None:
    world = 2 if "WORLD_SIZE" in env or "SLURM_NTASKS" not in env else int(env["SLURM_NTASKS"])
    with pytest.raises(RanksMissing, match=says.replace("(", r"\(").replace(")", r"\)")):
        task_ranks(world, env)


def _task(world_size: int) -> StageTask:
    return StageTask("s", "m", {}, "k", 0, 1, "/r/stages/s", index=0, world_size=world_size)


def test_the_local_executor_starts_several_processes_through_torchrun() -> None:
    one = worker_command(_task(1))
    assert one[1:4] == ["-P", "-m", "pipeline.worker"]
    two = worker_command(_task(2))
    assert two[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    # every process runs the worker command (`python -P` kept: --no-python) with the task of 2 processes
    assert two[-len(one) : -1] == one[:-1] and two[-len(one) - 1] == "--no-python"
    assert StageTask.from_json(two[-1]).world_size == 2


def test_sbatch_asks_for_nodes_and_tasks_per_node_and_the_group_address() -> None:
    params = sbatch_parameters(Resources(nodes=2, tasks_per_node=4, gpus_per_node=4), "r.decompose", None)
    assert (params["nodes"], params["ntasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    assert params["srun_args"] == ["--kill-on-bad-exit=1"]
    single = sbatch_parameters(Resources(gpus_per_node=1), "r.harvest", None)
    assert not {"nodes", "ntasks_per_node", "srun_args"} & set(single)
    setup = "\n".join(worker_setup(Path("/snap"), Path("/cwd"), multi_process=True))
    assert "export MASTER_ADDR=" in setup and "scontrol show hostnames" in setup and "SLURM_JOB_ID" in setup
    assert "MASTER_ADDR" not in "\n".join(worker_setup(Path("/snap"), Path("/cwd")))
    for owned in ("nodes", "N", "ntasks", "n", "ntasks_per_node", "--ntasks-per-node"):  # only through the fields
        with pytest.raises(ValidationError, match="set by the SLURM executor"):
            Resources(extra_sbatch={owned: "2"})


def test_decompose_runs_as_several_processes_only_when_it_trains_and_the_batch_splits() -> None:
    tms = {"target": {"kind": "tms"}, "spd": {"batch_size": 64, "eval_batch_size": 30}}
    with pytest.raises(ValueError, match=r"spd.eval_batch_size = 30 \(the global batch\) does not split evenly over 4"):
        check_world_size(DecomposeConfig.model_validate(tms), 4)
    check_world_size(DecomposeConfig.model_validate(tms), 2)
    ppgd = {
        "classname": "PersistentPGDReconLoss",
        "coeff": 1.0,
        "scope": {"type": "repeat_across_batch", "n_sources": 8},
    }
    tms_ppgd = {"target": {"kind": "tms"}, "spd": {"batch_size": 64, "losses": [ppgd]}}
    check_world_size(DecomposeConfig.model_validate(tms_ppgd), 8)  # 8 rows each: 8 sources tile them
    with pytest.raises(ValueError, match=r"spd.losses\[0\] \(PersistentPGDReconLoss\): scope.n_sources = 8 does not"):
        check_world_size(DecomposeConfig.model_validate(tms_ppgd), 16)
    with pytest.raises(ValueError, match="from_checkpoint and from_reference"):
        check_world_size(DecomposeConfig.model_validate({"from_checkpoint": "/x"}), 2)


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (a container's init may never)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_stopping_a_task_reaches_what_its_launcher_started_in_sessions_of_their_own(tmp_path: Path) -> None:
    """As torchrun does with its ranks: a SIGKILL of the launcher's group alone would leave them running."""
    launcher = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        "open(sys.argv[1], 'w').write(str(child.pid))\n"
        "time.sleep(120)\n"
    )
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", launcher, str(pid_file)], start_new_session=True)
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert not _dead(child)
    _stop_group(parent.pid, signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while not _dead(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(child)


def _pipeline(tmp_path: Path, stages: dict[str, Any], resources: dict[str, Any], executor: str = "local") -> Path:
    data = {
        "run": {"name": "mp", "seed": 3, "out_dir": str(tmp_path / "runs")},
        "executor": executor,
        "slurm": {"resources": resources},
        "stages": stages,
    }
    return write_pipeline(tmp_path / "mp.yaml", data)


@pytest.mark.parametrize(
    ("stages", "resources", "says"),
    [
        ({"t_source": {"n_tasks": 2}}, {"t_source": {"tasks_per_node": 2}}, "each 't_source' task is one process"),
        ({"t_ranks": {"scratch": "s"}}, {"t_ranks": {"tasks_per_node": 8}}, "cannot run as 8 processes"),
        ({"t_source": {"n_tasks": 2}}, {"t_source": {"merge": {"nodes": 2}}}, "a merge job is one process"),
        ({"t_ranks": {"scratch": "s"}}, {"t_ranks": {"nodes": 2}}, "the local executor runs on this machine only"),
    ],
)
def test_the_plan_refuses_processes_a_stage_cannot_run(
    tmp_path: Path, stages: dict[str, Any], resources: dict[str, Any], says: str
) -> None:
    path = _pipeline(tmp_path, stages, resources)
    result = run_cli("plan", path, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def _ranks_run(tmp_path: Path, **ranks_config: Any) -> tuple[Path, RunDir]:
    stages = {"t_ranks": {"scratch": str(tmp_path / "scratch"), **ranks_config}}
    return _pipeline(tmp_path, stages, {"t_ranks": {"tasks_per_node": 2}}), RunDir(tmp_path / "runs" / "mp")


def test_the_local_executor_runs_one_task_as_two_processes_and_rank_0_records_it(tmp_path: Path) -> None:
    path, run = _ranks_run(tmp_path)
    result = run_cli(path, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = json.loads((run.out_dir("t_ranks") / "ranks.json").read_text())
    assert [(r["rank"], r["world_size"], r["local_rank"]) for r in ranks] == [(0, 2, 0), (1, 2, 1)]
    assert ranks[0]["master"] == ranks[1]["master"] and ranks[0]["pid"] != ranks[1]["pid"]
    assert json.loads(run.task_marker("t_ranks", 0).read_text())["key"] == run.done_key("t_ranks")
    own, other = run.task_log("t_ranks", "0").read_text(), run.rank_log("t_ranks", "0", 1).read_text()
    assert "rank 0 of 2" in own and "rank 1 of 2" not in own
    assert "rank 1 of 2" in other and "rank 0 of 2" not in other
    assert not run.rank_log("t_ranks", "0", 0).exists()


def test_one_failing_process_fails_the_task_naming_its_rank_and_the_rerun_completes(tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    path, run = _ranks_run(tmp_path, fail_rank=1, fail_unless_exists=str(fixed))
    started = time.monotonic()
    result = run_cli(path, cwd=tmp_path)
    assert result.returncode != 0
    assert time.monotonic() - started < 60  # torchrun stops rank 0 (waiting for rank 1) at once, not after 60 s
    failure = json.loads(run.task_failed("t_ranks", "0").read_text())
    assert failure["error"] == "rank 1 of 2: RuntimeError: planted failure on rank 1"
    status = run_cli("status", run.root, "--json", cwd=tmp_path).json()
    stage = next(s for s in status["stages"] if s["name"] == "t_ranks")
    assert stage["state"] == "FAILED" and "rank 1 of 2" in stage["error"]
    assert not run.task_marker("t_ranks", 0).exists()
    fixed.touch()
    again = run_cli("rerun", run.root, "--stage", "t_ranks", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert run.done_key("t_ranks") is not None and not run.task_failed("t_ranks", "0").exists()


# --- the real cluster: srun starts the processes -----------------------------------------------------------
@pytest.fixture
def slurm_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, str]]]:
    """A unique run id on the local cluster (its jobs scancelled at the end) and the CLI env with the test-only
    stages as a plugin (in-process status reads it too)."""
    monkeypatch.setenv("SPD_PIPELINE_PLUGINS", PLUGIN)
    rid = f"mp-{uuid.uuid4().hex[:6]}"
    yield rid, {"SPD_PIPELINE_PLUGINS": PLUGIN}
    cancel_names([f"{rid}.t_ranks", f"{rid}.decompose"])


def _ranks_on_slurm(tmp_path: Path, rid: str, **ranks_config: Any) -> tuple[Path, RunDir]:
    data = {
        "run": {"name": rid, "out_dir": str(tmp_path / "runs")},
        "executor": "slurm",
        "slurm": {"profile": "local", "resources": {"t_ranks": {"tasks_per_node": 2}}},
        "stages": {"t_ranks": {"scratch": str(tmp_path / "scratch"), **ranks_config}},
    }
    return write_pipeline(tmp_path / "mp.yaml", data), RunDir(tmp_path / "runs" / rid)


@slurm
def test_slurm_runs_one_task_as_two_processes_each_with_its_log(
    tmp_path: Path, slurm_run: tuple[str, dict[str, str]]
) -> None:
    rid, env = slurm_run
    path, run = _ranks_on_slurm(tmp_path, rid)
    check(run_cli(path, cwd=tmp_path, env=env))
    wait_states(run, {"t_ranks": "COMPLETED"})
    ranks = json.loads((run.out_dir("t_ranks") / "ranks.json").read_text())
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    host, port = ranks[0]["master"].rsplit(":", 1)
    assert ranks[1]["master"] == ranks[0]["master"] and host and 20000 <= int(port) < 40000
    (record,) = submitted(run, "t_ranks")
    script = submission_script(run, "t_ranks", record)
    assert "--ntasks-per-node=2" in script and "--kill-on-bad-exit=1" in script and "MASTER_PORT" in script
    rank_log = run.rank_log("t_ranks", "0", 1)
    assert rank_log.is_symlink() and "rank 1 of 2" in rank_log.read_text()
    logs = check(run_cli("logs", run.root, "--stage", "t_ranks", "--task", "0", cwd=tmp_path, env=env)).stdout
    assert "rank 0 of 2" in logs and "rank 1 of 2" not in logs


@slurm
def test_slurm_fails_a_task_when_one_process_fails_naming_its_rank_and_the_rerun_completes(
    tmp_path: Path, slurm_run: tuple[str, dict[str, str]]
) -> None:
    rid, env = slurm_run
    fixed = tmp_path / "fixed"
    path, run = _ranks_on_slurm(tmp_path, rid, fail_rank=1, fail_unless_exists=str(fixed))
    check(run_cli(path, cwd=tmp_path, env=env))
    started = time.monotonic()
    states = wait_states(run, {"t_ranks": "FAILED"})
    assert time.monotonic() - started < 60  # srun ends rank 0 (waiting 60 s for rank 1) at once
    assert "rank 1 of 2: RuntimeError: planted failure on rank 1" in states["t_ranks"].error
    wait_queue_empty(run, ["t_ranks"])  # the failure is recorded a moment before srun has ended rank 0
    fixed.touch()
    check(run_cli("rerun", run.root, "--stage", "t_ranks", cwd=tmp_path, env=env))
    wait_states(run, {"t_ranks": "COMPLETED"})
