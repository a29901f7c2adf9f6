"""The `harvest` stage: per-component activation statistics and examples over a dataset (array + merge).

Thin: task i runs `spd.harvest.run_harvest_task` on its slice of the decomposition's corpus and writes
out/shards/shard-<i>.npz; the merge checks that every shard is there and builds out/harvest.duckdb
(`spd.harvest.HarvestStore` reads it). The fields are `spd.harvest.HarvestSettings` (plus `inputs`);
docs/storage.md documents the files. The task and the merge (which import torch) load inside `run_task` and
`merge`: this module is imported on the login node whenever a pipeline is planned or submitted.
"""

from __future__ import annotations

from spd.harvest.config import HarvestSettings
from stages.base import StageConfig, StageContext, StageSpec
from stages.windows import check_windows_available


class HarvestConfig(HarvestSettings, StageConfig):
    """Configuration of the harvest stage: the harvest settings, read by every task and by the merge."""


def run_task(config: HarvestConfig, ctx: StageContext, index: int) -> None:
    """Harvest this task's slice of the data into its own shard."""
    from spd.harvest.task import run_harvest_task

    run_harvest_task(
        ctx.upstream("decompose"), ctx.out_dir, config, index, seed=ctx.seed, task_seed=ctx.task_seed(index)
    )


def merge(config: HarvestConfig, ctx: StageContext) -> None:
    """Check every shard is present, fold them in one at a time, build out/harvest.duckdb."""
    from spd.harvest.merge import merge_harvest

    merge_harvest(ctx.out_dir, ctx.num_tasks, ctx.upstream("decompose"))


STAGE = StageSpec(
    name="harvest",
    config_type=HarvestConfig,
    upstreams=("decompose",),
    num_tasks=lambda config: config.n_tasks,
    run_task=run_task,
    merge=merge,
    preflight=check_windows_available,
    description="Per-component activation statistics and examples over a dataset (array + merge).",
)
