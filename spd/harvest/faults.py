"""FAULT INJECTION FOR TESTS ONLY: make a harvest task or merge die abruptly in the middle of writing a file.

The crash-safety tests need a process killed at the worst moment: part of its file written, the rest not.
Both hooks SIGKILL their own process (no cleanup, no exception handlers, exactly like the OOM killer or a
node failure). Nothing sets these variables outside tests; with them unset, each hook is a dictionary lookup.

* `SPD_FAULT_HARVEST_SIGKILL_TASK=<i>`: task i dies after `SPD_FAULT_HARVEST_KILL_AFTER` members (default 3)
  of its temp shard file are on disk.
* `SPD_FAULT_HARVEST_SIGKILL_STORE_BUILD=<n>`: the merge dies after n of the 7 steps of
  spd.harvest.store_builder.build_store (step 1 creates the tables in the temp DuckDB file, steps 2-7 fill
  them, each committed), i.e. with some tables written to the temp file, before CHECKPOINT and the rename.
"""

from __future__ import annotations

import os
import signal

KILL_TASK_ENV = "SPD_FAULT_HARVEST_SIGKILL_TASK"
KILL_AFTER_ENV = "SPD_FAULT_HARVEST_KILL_AFTER"
KILL_STORE_BUILD_ENV = "SPD_FAULT_HARVEST_SIGKILL_STORE_BUILD"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def shard_write_fault_point(task: int, members_written: int) -> None:
    """Called by the shard writer after each member; SIGKILLs this process when a test asked for it."""
    target = os.environ.get(KILL_TASK_ENV)
    if target is None or target.strip() != str(task):
        return
    if members_written >= int(os.environ.get(KILL_AFTER_ENV, "3")):
        _die()


def store_build_fault_point(steps_done: int) -> None:
    """Called by the store builder after each build step; SIGKILLs this process when a test asked for it."""
    target = os.environ.get(KILL_STORE_BUILD_ENV)
    if target is not None and steps_done >= int(target):
        _die()
