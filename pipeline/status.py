"""Stage states of a run, derived from its records (markers, failures, cancellations) and the
executor's view of what is live. Nothing here is stored: status is recomputed on every call,
so it is right from any shell, after a crash, or after the driver is gone.

`RunStatus.to_json()` (what `status --json` prints) is also the run record handed to the tools that read a run
without the orchestrator (`report`, `serve`): they read this object, never plan.json or a stage's job log.
Its fields are documented in docs/cli.md; new fields are added, none renamed or removed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pipeline.atomic import read_json
from pipeline.dag import Plan, load_plan
from pipeline.executors.base import Executor, TaskView
from pipeline.runs import MERGE, RunDir

BAD_STATES = ("FAILED", "CANCELLED", "UPSTREAM_FAILED")
LIVE_STATES = ("RUNNING", "PENDING")  # a run with none of these has ended (or was never started)
LOG_TAIL_LINES = 15
JOB_START_EVENTS = ("launch", "submitted")  # a task launched (local) or a job submitted (SLURM)
JOB_END_EVENTS = ("exit",)


@dataclass
class TaskCounts:
    total: int
    done: int = 0
    failed: int = 0
    running: int = 0


@dataclass
class StageStatus:
    name: str
    state: str
    key: str
    tasks: TaskCounts
    job_ids: list[str] = field(default_factory=list)
    log_dir: str = ""
    error: str | None = None
    failed_tasks: list[str] = field(default_factory=list)
    elapsed_s: float | None = None
    # The stage as planned and where its records place it (docs/cli.md, `status --json`).
    out_dir: str | None = None  # absolute path of the stage's outputs (RUN/stages/<name>/out)
    inputs: dict[str, str] = field(default_factory=dict)  # upstream stage -> the output directory it reads
    num_tasks: int | None = None
    seed: int | None = None
    started_at: str | None = None  # first task launch (local) or job submission (SLURM)
    finished_at: str | None = None  # last task exit, or the stage's finish time when later
    wall_s: float | None = None  # finished_at - started_at


@dataclass
class RunStatus:
    run_id: str
    run_dir: str
    executor: str
    stages: list[StageStatus]  # the planned stages, in plan (topological) order
    created_at: str | None = None
    pipeline_file: str | None = None
    seed: int | None = None
    code: dict[str, Any] = field(default_factory=dict)  # commit, dirty, snapshot
    versions: dict[str, str] = field(default_factory=dict)
    last_command: str | None = None  # the command line of the last run/rerun
    # Outputs of stages that are not in the plan: a path a planned stage was given for it (an input from
    # outside the run), else its out/ left in this run directory by an earlier plan.
    external: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def log_tail(path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _failure_summary(run: RunDir, stage: str, labels: list[str]) -> str:
    label = labels[0]
    record = read_json(run.task_failed(stage, label)) or {}
    what = "merge" if label == MERGE else f"task {label}"
    log = run.task_log(stage, label)
    head = f"{what} failed: {record.get('error', 'unknown error')} (log: {log})"
    tail = log_tail(log)
    return head + ("\n" + tail if tail else "")


def _elapsed(records: list[dict[str, Any]]) -> float | None:
    seconds = [r.get("seconds") for r in records if r.get("event") in JOB_END_EVENTS]
    seconds = [s for s in seconds if isinstance(s, int | float)]
    return round(sum(seconds), 3) if seconds else None


def _stage_elapsed(executor: Executor, run: RunDir, stage: str, records: list[dict[str, Any]]) -> float | None:
    """Run time as the executor knows it (optional method `elapsed`; SLURM: sacct), else the job log's 'exit'
    records (`records`)."""
    known = getattr(executor, "elapsed", None)
    value = known(run, stage) if known is not None else None
    return value if value is not None else _elapsed(records)


def _job_span(run: RunDir, stage: str, records: list[dict[str, Any]]) -> tuple[str | None, str | None, float | None]:
    """(first start, end, wall seconds between them): the first launch or submission in the stage's job log
    (`records`), and its last task exit or, when later, the finish time done.json records."""
    starts = [str(r["time"]) for r in records if r.get("event") in JOB_START_EVENTS and r.get("time")]
    ends = [str(r["time"]) for r in records if r.get("event") in JOB_END_EVENTS and r.get("time")]
    done = read_json(run.done_json(stage))
    if isinstance(done, dict) and done.get("finished_at"):
        ends.append(str(done["finished_at"]))
    first = min(starts) if starts else None
    last = max(ends) if ends else None
    wall = None
    if first and last:
        try:
            wall = max(0.0, (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds())
        except ValueError:
            wall = None
    return first, last, wall


def _external_outputs(run: RunDir, plan: Plan) -> dict[str, str]:
    """Output directories of stages outside the plan: given by path to a planned stage (the first in plan order
    wins), else an out/ directory an earlier plan left in this run."""
    found: dict[str, str] = {}
    for planned in plan.stages.values():
        for upstream, given in planned.external.items():
            if upstream not in plan.stages and given:
                found.setdefault(upstream, given)
    for name in run.stage_names():
        if name not in plan.stages and name not in found and run.out_dir(name).is_dir():
            found[name] = str(run.out_dir(name))
    return found


def _state(
    run: RunDir, name: str, failed: list[str], views: dict[str, TaskView], upstream_bad: list[str]
) -> tuple[str, str | None]:
    """(state, error) of a stage that is not done."""
    lost = {label: v for label, v in views.items() if v.state == "FAILED" and label not in failed}
    if failed:
        return "FAILED", _failure_summary(run, name, failed)
    if lost:
        label, view = next(iter(sorted(lost.items())))
        return "FAILED", f"task {label}: {view.reason} (log: {run.task_log(name, label)})"
    if run.cancelled_json(name).exists():
        return "CANCELLED", None
    if any(v.state == "RUNNING" for v in views.values()):
        return "RUNNING", None
    never = [v for v in views.values() if v.state in ("UPSTREAM_FAILED", "CANCELLED")]
    if upstream_bad or any(v.state == "UPSTREAM_FAILED" for v in never):
        why = f"upstream stage(s) {upstream_bad} did not complete" if upstream_bad else never[0].reason
        return "UPSTREAM_FAILED", f"{why}; this stage can never start"
    if never:
        return "CANCELLED", never[0].reason or None
    if views:
        return "PENDING", None
    return "NOT_STARTED", None


def _done_mismatch(run: RunDir, stage: str, key: str) -> str:
    """A done.json in a directory prepared for this key that records another key: its records disagree (an
    edit by hand, or files copied in from another run), so the outputs cannot be trusted as this plan's."""
    return (
        f"{run.done_json(stage)} records key {run.done_key(stage)!r}, but the stage was prepared for {key!r}: "
        f"its outputs are not this plan's; redo it with `python run.py rerun {run.root} --stage {stage} --force`"
    )


def run_status(run: RunDir, executor: Executor) -> RunStatus:
    plan_record, plan = load_plan(run)
    cached = set(plan_record.get("last_invocation", {}).get("cached", []))
    scheduler = executor.task_states(run, plan)
    statuses: dict[str, StageStatus] = {}
    for name, planned in plan.stages.items():
        views = scheduler.get(name, {})
        failed = run.failed_labels(name)
        records = run.job_records(name)  # read once: run time, start and finish come from it
        counts = TaskCounts(total=planned.num_tasks)
        # Markers count only in a stage directory prepared for the plan's key: one left from another config
        # (a `run --only` of other stages) holds another computation's markers.
        prepared = run.prepared_key(name)
        current = run.stage_dir(name).exists() and prepared in (None, planned.key)
        counts.done = len(run.done_tasks(name, planned.num_tasks)) if current else 0
        counts.running = sum(1 for v in views.values() if v.state == "RUNNING")
        failed_all = sorted(set(failed) | {lbl for lbl, v in views.items() if v.state == "FAILED"})
        counts.failed = len([x for x in failed_all if x != MERGE])
        status = StageStatus(
            name=name,
            state="COMPLETED",
            key=planned.key,
            tasks=counts,
            job_ids=executor.job_ids(run, name),
            log_dir=str(run.logs_dir(name)),
            elapsed_s=_stage_elapsed(executor, run, name, records),
            out_dir=str(run.out_dir(name)),
            inputs={**{u: str(run.out_dir(u)) for u in planned.upstreams}, **planned.external},
            num_tasks=planned.num_tasks,
            seed=planned.seed,
        )
        status.started_at, status.finished_at, status.wall_s = _job_span(run, name, records)
        if run.is_done(name, planned.key):
            status.state = "CACHED" if name in cached else "COMPLETED"
            status.tasks.done = planned.num_tasks
        else:
            upstream_bad = [u for u in planned.upstreams if statuses[u].state in BAD_STATES]
            status.state, status.error = _state(run, name, failed, views, upstream_bad)
            if current and run.done_json(name).exists() and status.state not in LIVE_STATES:
                status.state, status.error = "FAILED", _done_mismatch(run, name, planned.key)
            status.failed_tasks = failed_all if status.state == "FAILED" else []
        statuses[name] = status
    return RunStatus(
        run_id=run.run_id,
        run_dir=str(run.root),
        executor=plan_record.get("executor", "?"),
        stages=list(statuses.values()),
        created_at=plan_record.get("created_at"),
        pipeline_file=plan_record.get("pipeline_file"),
        seed=plan_record.get("seed"),
        code=plan_record.get("code") or {},
        versions=plan_record.get("versions") or {},
        last_command=(plan_record.get("last_invocation") or {}).get("command"),
        external=_external_outputs(run, plan),
    )
