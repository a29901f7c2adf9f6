"""Which process of a multi-process task this is, read from the launcher's environment.

A task whose resources ask for nodes x tasks_per_node > 1 processes is started as that many copies of the worker:
by torchrun on the local executor (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and by srun
under SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; the batch script exports MASTER_ADDR and MASTER_PORT,
see pipeline.executors.slurm.worker_setup). A one-process task never reads any of it, so a local run inside a
SLURM allocation cannot mistake the allocation's tasks for its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from stages.base import TaskRanks

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


class RanksMissing(RuntimeError):
    """A multi-process task started without a launcher's environment that says it has that many processes."""


def task_ranks(world_size: int, env: Mapping[str, str] | None = None) -> TaskRanks:
    """This process's place among `world_size` processes (the planned nodes x tasks_per_node)."""
    if world_size == 1:
        return TaskRanks()
    env = os.environ if env is None else env
    launcher = "torchrun" if started_by_torchrun(env) else "srun"
    names = TORCHRUN_VARS if launcher == "torchrun" else SLURM_VARS
    if not all(name in env for name in names):
        raise RanksMissing(
            f"this task is planned as {world_size} processes, but neither torchrun's ({', '.join(TORCHRUN_VARS)}) "
            f"nor SLURM's ({', '.join(SLURM_VARS)}) variables are set: start it through an executor"
        )
    rank, world, local = (_int(env, name) for name in names)
    if world != world_size:
        raise RanksMissing(
            f"this task is planned as {world_size} processes, but {launcher} started {world} "
            "(nodes x tasks_per_node of the plan and of the allocation differ)"
        )
    if not 0 <= rank < world or "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        raise RanksMissing(f"{launcher} gave rank {rank} of {world} without MASTER_ADDR / MASTER_PORT")
    return TaskRanks(rank, world, local, env["MASTER_ADDR"], _int(env, "MASTER_PORT"))


def started_by_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """Whether torchrun started this process (its ranks share one stdout; srun gives each its own file)."""
    env = os.environ if env is None else env
    return all(name in env for name in TORCHRUN_VARS)


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise RanksMissing(f"{name}={env[name]!r} is not an integer") from None
