"""FAULT INJECTION FOR TESTS ONLY: make a harvest task die abruptly in the middle of writing its shard.

The crash-safety tests need a task killed at the worst moment: part of its shard written, the rest not.
Setting the environment variable below to a task index makes that task SIGKILL itself (no cleanup, no
exception handlers, exactly like the OOM killer or a node failure) after `SPD_FAULT_HARVEST_KILL_AFTER`
members (default 3) of its temp shard file are on disk. Nothing sets it outside tests; with the variable
unset, the hook is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal

KILL_TASK_ENV = "SPD_FAULT_HARVEST_SIGKILL_TASK"
KILL_AFTER_ENV = "SPD_FAULT_HARVEST_KILL_AFTER"


def shard_write_fault_point(task: int, members_written: int) -> None:
    """Called by the shard writer after each member; SIGKILLs this process when a test asked for it."""
    target = os.environ.get(KILL_TASK_ENV)
    if target is None or target.strip() != str(task):
        return
    if members_written >= int(os.environ.get(KILL_AFTER_ENV, "3")):
        os.kill(os.getpid(), signal.SIGKILL)
