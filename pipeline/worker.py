"""THE worker entry: `run_stage_task(task)` runs one task of one stage, on any executor.

The local executor calls it in a subprocess (`python -m pipeline.worker '<task json>'`), the
SLURM executor through submitit; both pickle or pass only a `StageTask`: that stage's config,
the paths it needs and a task index. No pipeline config, no other stage, no secret.

Idempotent: a task whose marker exists returns at once; a task that runs again starts from
scratch (stages write outputs through temp files), and markers are written last.

A task planned as several processes (resources nodes x tasks_per_node > 1: data-parallel decompose) runs this
entry once per process; each finds its rank in the launcher's environment (pipeline.ranks). Rank 0 alone clears
and writes the task's records (marker, done.json); every rank records its own failure if none is recorded yet.

A merge that finds some tasks' outputs unusable (a corrupted or missing shard) says so with an error
carrying `invalid_tasks` (stages.base.TaskOutputInvalid). The worker then removes those tasks' markers
before recording the failure, so `rerun --stage <stage>` redoes exactly those tasks and the merge.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.atomic import atomic_write_json, make_read_only, make_writable, read_json
from pipeline.errors import UpstreamMissing
from pipeline.ranks import started_by_torchrun, task_ranks
from pipeline.registry import load_stage
from pipeline.runs import RunDir, now_iso, task_label
from stages.base import StageContext, StageSpec, TaskOutputInvalid, TaskRanks, invalid_task_outputs


@dataclass(frozen=True)
class StageTask:
    """Everything one task receives. `index` None means the stage's merge task."""

    stage: str
    module: str
    config: dict
    key: str
    seed: int
    num_tasks: int
    stage_dir: str
    upstream_dirs: dict[str, str] = field(default_factory=dict)
    upstream_markers: dict[str, str] = field(default_factory=dict)
    index: int | None = None
    world_size: int = 1  # processes this task runs as (nodes x tasks_per_node); each one calls run_stage_task

    @property
    def label(self) -> str:
        return task_label(self.index)

    @property
    def run_dir(self) -> RunDir:
        """The run directory (stage_dir is <run>/stages/<stage>)."""
        return RunDir(Path(self.stage_dir).parents[1])

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StageTask:
        return cls(**json.loads(text))


def _log(task: StageTask, message: str, ranks: TaskRanks | None = None) -> None:
    where = f"{task.stage}:{task.label}" + (f" rank {ranks.rank}" if ranks and ranks.world_size > 1 else "")
    with contextlib.suppress(OSError):  # a log on a full disk must not replace the error being reported
        print(f"[{now_iso()}] [{where}] {message}", flush=True)


def _own_rank_log(task: StageTask, run: RunDir, ranks: TaskRanks) -> None:
    """Under torchrun every process shares the task's log; ranks above 0 move to logs/task-<i>.rank<r>.log.
    (srun already gives each process its own file; the SLURM executor links it under the same name.)"""
    path = run.rank_log(task.stage, task.label, ranks.rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "ab") as log:
        os.dup2(log.fileno(), sys.stdout.fileno())
        os.dup2(log.fileno(), sys.stderr.fileno())


def check_upstreams(task: StageTask) -> None:
    """Refuse to run when an upstream stage has no done.json (see UpstreamMissing)."""
    missing = {u: p for u, p in task.upstream_markers.items() if not Path(p).is_file()}
    if missing:
        details = ", ".join(f"{u} ({p})" for u, p in sorted(missing.items()))
        raise UpstreamMissing(
            f"stage {task.stage!r} cannot start: upstream stage(s) not finished, done.json missing: {details}. "
            "Rerun the upstream stage first."
        )


def _context(task: StageTask, run: RunDir, ranks: TaskRanks | None = None) -> StageContext:
    return StageContext(
        stage=task.stage,
        out_dir=run.out_dir(task.stage),
        upstream_dirs={k: Path(v) for k, v in task.upstream_dirs.items()},
        num_tasks=task.num_tasks,
        seed=task.seed,
        ranks=ranks or TaskRanks(),
    )


def _finalize(task: StageTask, spec: StageSpec, config: object, run: RunDir) -> None:
    """Check every task marker, run the stage's merge, make out/ read-only, write done.json."""
    if run.is_done(task.stage, task.key):
        _log(task, "stage already done; nothing to merge")
        return
    make_writable(run.out_dir(task.stage))  # a merge killed after the chmod, before done.json
    missing = sorted(set(range(task.num_tasks)) - set(run.done_tasks(task.stage, task.num_tasks)))
    if missing:
        raise RuntimeError(
            f"stage {task.stage!r}: merge needs all {task.num_tasks} task markers; missing tasks {missing}"
        )
    started = time.monotonic()
    if spec.merge is not None:
        _log(task, "merging")
        try:
            spec.merge(config, _context(task, run))
        except Exception as e:
            invalid = [i for i in invalid_task_outputs(e) if 0 <= i < task.num_tasks]
            if not invalid:
                raise
            raise _send_tasks_back(task, run, invalid, e) from e
    make_read_only(run.out_dir(task.stage))
    atomic_write_json(
        run.done_json(task.stage),
        {
            "stage": task.stage,
            "key": task.key,
            "num_tasks": task.num_tasks,
            "seed": task.seed,
            "finished_at": now_iso(),
            "merge_seconds": round(time.monotonic() - started, 3),
            "host": socket.gethostname(),
        },
    )
    _log(task, "stage done")


def _send_tasks_back(task: StageTask, run: RunDir, invalid: list[int], error: Exception) -> TaskOutputInvalid:
    """Remove the markers of tasks whose outputs the merge refused; return the error to record for the merge.

    Without this a rerun would skip those tasks (their markers say done) and the merge would fail again.
    """
    for index in invalid:
        run.task_marker(task.stage, index).unlink(missing_ok=True)
    _log(task, f"outputs of task(s) {invalid} are unusable; removed their markers")
    return TaskOutputInvalid(
        f"{error} -- the marker(s) of task(s) {invalid} were removed; "
        f"`python run.py rerun {run.root} --stage {task.stage}` redoes them and the merge",
        invalid,
    )


def run_stage_task(task: StageTask) -> str:
    """Run one task (or the merge) of a stage. Raises on failure, after recording it."""
    run = task.run_dir
    ranks = TaskRanks()
    try:
        ranks = task_ranks(task.world_size)
        if ranks.rank > 0 and started_by_torchrun():
            _own_rank_log(task, run, ranks)
        check_upstreams(task)
        spec = load_stage(task.module, task.stage)
        config = spec.config_type.model_validate(task.config)
        if task.index is None:
            _finalize(task, spec, config, run)
            return "merged"
        marker = run.task_marker(task.stage, task.index)
        recorded = read_json(marker)
        if recorded and recorded.get("key") == task.key:
            _log(task, "marker present; skipping", ranks)
        else:
            if ranks.is_main:
                if ranks.world_size == 1:  # of several processes, another may have failed already: its record stays
                    run.clear_task_failure(task.stage, task.label)
                run.out_dir(task.stage).mkdir(parents=True, exist_ok=True)
                make_writable(run.out_dir(task.stage))  # left read-only by a merge killed before done.json
            started = time.monotonic()
            of = f", rank {ranks.rank} of {ranks.world_size}" if ranks.world_size > 1 else ""
            _log(task, f"start (pid {os.getpid()} on {socket.gethostname()}{of})", ranks)
            spec.run_task(config, _context(task, run, ranks), task.index)
            if not ranks.is_main:  # rank 0 alone records the task (run_task returns on every rank together)
                _log(task, f"rank {ranks.rank} done in {time.monotonic() - started:.2f}s", ranks)
                return "done"
            atomic_write_json(
                marker,
                {
                    "stage": task.stage,
                    "key": task.key,
                    "index": task.index,
                    "seconds": round(time.monotonic() - started, 3),
                    "finished_at": now_iso(),
                    "host": socket.gethostname(),
                },
            )
            _log(task, f"done in {time.monotonic() - started:.2f}s")
        if task.num_tasks == 1 and ranks.is_main:
            _finalize(task, spec, config, run)
        return "done"
    except BaseException as e:
        if not isinstance(e, SystemExit | KeyboardInterrupt):
            _record_failure(task, run, e, ranks)
        raise


def _record_failure(task: StageTask, run: RunDir, error: BaseException, ranks: TaskRanks | None = None) -> None:
    """Write tasks/<label>.failed. Of the processes of one task, the first to fail writes it: its error is the
    cause, the others' (a peer closed the connection, a collective timed out) are consequences, kept in their logs."""
    ranks = ranks or TaskRanks()
    tb = traceback.format_exception(type(error), error, error.__traceback__)
    _log(task, f"FAILED: {type(error).__name__}: {error}", ranks)
    failed = run.task_failed(task.stage, task.label)
    of = f"rank {ranks.rank} of {ranks.world_size}: " if ranks.world_size > 1 else ""
    if of and failed.exists():
        return
    try:
        atomic_write_json(
            failed,
            {
                "stage": task.stage,
                "task": task.label,
                "error": f"{of}{type(error).__name__}: {error}",
                "traceback": "".join(tb)[-4000:],
                "time": now_iso(),
                "host": socket.gethostname(),
            },
        )
    except OSError as record_error:  # e.g. the same full disk: the original error must still be the one raised
        _log(task, f"could not write the failure record ({record_error}); the scheduler's state is the record")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pipeline.worker '<stage task json>'", file=sys.stderr)
        return 2
    try:
        run_stage_task(StageTask.from_json(args[0]))
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
