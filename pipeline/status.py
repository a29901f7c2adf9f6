"""Stage states of a run, derived from its records (markers, failures, cancellations) and the
executor's view of what is live. Nothing here is stored: status is recomputed on every call,
so it is right from any shell, after a crash, or after the driver is gone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.atomic import read_json
from pipeline.dag import Plan
from pipeline.executors.base import Executor
from pipeline.runs import MERGE, RunDir

STATES = (
    "NOT_STARTED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "CACHED", "UPSTREAM_FAILED",
)
BAD_STATES = ("FAILED", "CANCELLED", "UPSTREAM_FAILED")
FINAL_STATES = ("COMPLETED", "CACHED", *BAD_STATES)
LOG_TAIL_LINES = 15


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


@dataclass
class RunStatus:
    run_id: str
    run_dir: str
    executor: str
    stages: list[StageStatus]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def finished(self) -> bool:
        return all(s.state in FINAL_STATES or s.state == "NOT_STARTED" for s in self.stages)

    @property
    def ok(self) -> bool:
        return all(s.state in ("COMPLETED", "CACHED") for s in self.stages)


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


def _elapsed(run: RunDir, stage: str) -> float | None:
    seconds = [r.get("seconds") for r in run.job_records(stage) if r.get("event") == "exit"]
    seconds = [s for s in seconds if isinstance(s, int | float)]
    return round(sum(seconds), 3) if seconds else None


def run_status(run: RunDir, executor: Executor) -> RunStatus:
    plan_record = run.read_plan()
    plan = Plan.from_records(plan_record["stages"])
    cached = set(plan_record.get("last_invocation", {}).get("cached", []))
    live = executor.live_tasks(run, plan)
    statuses: dict[str, StageStatus] = {}
    for name, planned in plan.stages.items():
        counts = TaskCounts(total=planned.num_tasks)
        counts.done = len(run.done_tasks(name, planned.num_tasks)) if run.stage_dir(name).exists() else 0
        failed = run.failed_labels(name)
        lost_fn = getattr(executor, "lost_tasks", None)
        lost = [x for x in (lost_fn(run, name) if lost_fn else []) if x not in failed]
        stage_live = live.get(name, {})
        counts.running = sum(1 for s in stage_live.values() if s == "RUNNING")
        counts.failed = len([x for x in failed + lost if x != MERGE])
        status = StageStatus(
            name=name, state="NOT_STARTED", key=planned.key, tasks=counts,
            job_ids=executor.job_ids(run, name), log_dir=str(run.logs_dir(name)), elapsed_s=_elapsed(run, name),
        )
        upstream_bad = any(statuses[u].state in BAD_STATES for u in planned.upstreams)
        if run.is_done(name, planned.key):
            status.state = "CACHED" if name in cached else "COMPLETED"
            status.tasks.done = planned.num_tasks
        elif failed or lost:
            status.state = "FAILED"
            status.failed_tasks = failed + lost
            if failed:
                status.error = _failure_summary(run, name, failed)
            else:
                status.error = f"task {lost[0]} vanished without a marker (process killed?); log: {run.task_log(name, lost[0])}"
        elif run.cancelled_json(name).exists():
            status.state = "CANCELLED"
        elif counts.running:
            status.state = "RUNNING"
        elif upstream_bad:
            status.state = "UPSTREAM_FAILED"
            bad = [u for u in planned.upstreams if statuses[u].state in BAD_STATES]
            status.error = f"upstream stage(s) {bad} did not complete; this stage cannot start"
        elif stage_live:
            status.state = "PENDING"
        statuses[name] = status
    return RunStatus(
        run_id=run.run_id, run_dir=str(run.root), executor=plan_record.get("executor", "?"),
        stages=list(statuses.values()),
    )
