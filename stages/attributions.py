"""The `attributions` stage: dataset-averaged gradient x activation attributions between components (array + merge).

Thin: each array task computes one shard over its disjoint slice of the windows (spd.attributions.compute_shard),
the merge combines every shard into out/attributions.duckdb (spd.attributions.merge_shards). Alive masks come
from the harvest store when a harvest upstream is present (run in the pipeline or given in `inputs`);
otherwise every component is computed. Out directory:

    shards/shard-<task>.pt     per-task sums and token counts (kept: the merge can be rerun from them)
    attributions.duckdb        the store (schema: spd/attributions/store.py, docs/storage.md)

Only the config is imported at module level: this module is loaded on the login node whenever a pipeline is
planned or submitted, and the computation (torch) loads inside `run_task` and `merge`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from spd.attributions.config import AttributionSettings
from spd.harvest.config import DENSITY_FIELDS
from stages.base import StageConfig, StageContext, StageSpec
from stages.windows import check_windows_available

SHARD_DIR = "shards"


class AttributionsConfig(StageConfig, AttributionSettings):
    """Attribution settings (spd.attributions.AttributionSettings) plus how many array tasks share the data."""

    n_tasks: int = Field(1, ge=1, description="Array tasks; task i processes global batches i, i + n_tasks, ...")


def _harvest_db(config: AttributionsConfig, ctx: StageContext) -> Path | None:
    from spd.attributions.alive import HARVEST_DB

    if not config.use_harvest or "harvest" not in ctx.upstream_dirs:
        return None
    return ctx.upstream("harvest") / HARVEST_DB


def _settings(config: AttributionsConfig) -> AttributionSettings:
    return AttributionSettings.model_validate(config.model_dump(include=set(AttributionSettings.model_fields)))


def run_task(config: AttributionsConfig, ctx: StageContext, index: int) -> None:
    """Compute shard `index` of ctx.num_tasks into out/shards/."""
    from spd.attributions.shard import compute_shard

    compute_shard(
        _settings(config),
        ctx.upstream("decompose"),
        ctx.out_dir / SHARD_DIR,
        index,
        ctx.num_tasks,
        harvest_db=_harvest_db(config, ctx),
        seed=ctx.task_seed(index),
    )


def merge(config: AttributionsConfig, ctx: StageContext) -> None:
    """Check that every shard is there, combine them and write out/attributions.duckdb."""
    from spd.attributions.merge import merge_shards
    from spd.attributions.store import STORE_FILE

    merge_shards(
        ctx.out_dir / SHARD_DIR,
        ctx.num_tasks,
        ctx.upstream("decompose"),
        ctx.out_dir / STORE_FILE,
        extra_meta={"stage_seed": ctx.seed},
    )


STAGE = StageSpec(
    name="attributions",
    config_type=AttributionsConfig,
    upstreams=("decompose",),
    optional_upstreams=("harvest",),
    # Only harvest's firing densities are read (alive masks): its example settings must not rerun attributions.
    upstream_fields={"harvest": DENSITY_FIELDS},
    num_tasks=lambda config: config.n_tasks,
    run_task=run_task,
    merge=merge,
    preflight=check_windows_available,
    description="Dataset-averaged gradient x activation attributions between components (array + merge).",
)
