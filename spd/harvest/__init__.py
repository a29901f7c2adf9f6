"""Harvest: per-component activation statistics and examples over a corpus, sharded and merged exactly.

    run_harvest_task(decomposition_dir, out_dir, settings, task, seed)   one array task -> shards/shard-<task>.npz
    merge_harvest(out_dir, n_tasks, decomposition_dir)                   all shards -> out/harvest.duckdb
    HarvestStore.open(out_dir)                                           the read-only API later stages use

Module map: config (settings), data (a task's slice of the corpus), activations (CI, component activations,
top predictions of a batch), keys (shard-invariant sampling keys), reservoir (bottom-k example sets),
windows (example windows), counters (exact int64 counters, sparse or dense), accumulators (a task's statistics),
shard (the task's file), faults (test-only fault injection), merge (shards -> totals), schema +
store_builder (the DuckDB store), store (reading it), planted (planted-feature match metric).
Storage formats: docs/storage.md.
"""

from spd.harvest.config import HarvestSettings
from spd.harvest.merge import ShardMissingError, merge_harvest
from spd.harvest.schema import STORE_FILE, ActivationExample, CofiringStat, ComponentSummary, TokenStat
from spd.harvest.store import HarvestStore
from spd.harvest.task import run_harvest_task

__all__ = [
    "STORE_FILE",
    "ActivationExample",
    "CofiringStat",
    "ComponentSummary",
    "HarvestSettings",
    "HarvestStore",
    "ShardMissingError",
    "TokenStat",
    "merge_harvest",
    "run_harvest_task",
]
