"""Harvest: per-component activation statistics and examples over a corpus, sharded and merged exactly.

    run_harvest_task(decomposition_dir, out_dir, settings, task, seed)   one array task -> shards/shard-<task>.npz
    merge_harvest(out_dir, n_tasks, decomposition_dir)                   all shards -> out/harvest.duckdb
    HarvestStore.open(out_dir)                                           the read-only API later stages use

Module map: config (settings), data (a task's slice of the corpus), activations (CI, component activations,
top predictions of a batch), keys (shard-invariant sampling keys), reservoir (bottom-k example sets),
windows (example windows), counters (exact int64 counters, sparse or dense), cofiring (exact pair counts, sparse or dense),
batch_scan (a batch's per-entry work: firings, sums, token counts, example candidates), accumulators (a task's
statistics), *_numba + jit (the CPU kernels), malloc (page reuse across batches), shard (the task's file),
faults (test-only fault injection), merge (shards -> totals), schema + store_builder (the DuckDB store), store
(reading it), planted (planted-feature match metric).
Storage formats: docs/storage.md.
"""

from spd.lazy import lazy_exports

# Lazy: readers of the store (autointerp, scorers, the report) must not pay for importing torch, which only the
# task and the merge need.
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spd.harvest.config": ("HarvestSettings",),
        "spd.harvest.merge": ("ShardMissingError", "merge_harvest"),
        "spd.harvest.schema": ("STORE_FILE", "ActivationExample", "CofiringStat", "ComponentSummary", "TokenStat"),
        "spd.harvest.store": ("HarvestStore",),
        "spd.harvest.task": ("run_harvest_task",),
    },
)
