"""The one small interface both executors implement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from pipeline.dag import Plan
from pipeline.runs import RunDir

SchedulerState = Literal["PENDING", "RUNNING", "FAILED", "CANCELLED", "UPSTREAM_FAILED"]


@dataclass(frozen=True)
class TaskView:
    """What the executor sees of one task (label: index or 'merge') that has no marker."""

    state: SchedulerState
    reason: str = ""
    job_id: str = ""
    # True when the state is inferred rather than reported by the scheduler (a job submitted
    # seconds ago that no tool lists yet is taken as PENDING).
    inferred: bool = False


class Executor(Protocol):
    name: str

    def launch(self, run: RunDir, plan: Plan, work: dict[str, list[int]], wait: bool) -> bool:
        """Start `work` (stage -> task indices to run; [] = only the merge is left).

        With wait, block until it ends and return whether every stage completed; without,
        return True once everything is submitted.
        """
        ...

    def task_states(self, run: RunDir, plan: Plan) -> dict[str, dict[str, TaskView]]:
        """Per stage, the scheduler's view of tasks not yet done: queued, running, or ended
        without a marker (killed, timed out, cancelled, never startable)."""
        ...

    def job_ids(self, run: RunDir, stage: str) -> list[str]:
        """Identifiers of the stage's jobs or processes, newest submission first."""
        ...

    def cancel(self, run: RunDir, plan: Plan, stages: list[str]) -> list[str]:
        """Stop the live tasks of `stages`, record them CANCELLED; return what was stopped."""
        ...
