"""The one small interface both executors implement."""

from __future__ import annotations

from typing import Literal, Protocol

from pipeline.dag import Plan
from pipeline.runs import RunDir

LiveState = Literal["PENDING", "RUNNING"]


class Executor(Protocol):
    name: str

    def launch(self, run: RunDir, plan: Plan, work: dict[str, list[int]], wait: bool) -> bool:
        """Start `work` (stage -> task indices to run; [] = only the merge is left).

        With wait, block until it ends and return whether every stage completed; without,
        return True once everything is submitted.
        """
        ...

    def live_tasks(self, run: RunDir, plan: Plan) -> dict[str, dict[str, LiveState]]:
        """Per stage, the tasks (labels) that are queued or running right now."""
        ...

    def job_ids(self, run: RunDir, stage: str) -> list[str]:
        """Identifiers of the stage's jobs or processes, newest submission first."""
        ...

    def cancel(self, run: RunDir, plan: Plan, stages: list[str]) -> list[str]:
        """Stop the live tasks of `stages`, record them CANCELLED; return what was stopped."""
        ...
