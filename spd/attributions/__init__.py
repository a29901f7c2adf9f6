"""Dataset attributions: gradient x activation between components, token inputs and output logits.

Pipeline: `compute_shard` (one array task over a disjoint slice of the data) -> `merge_shards` (token-weighted
mean, top-k reduction, out/attributions.duckdb) -> `AttributionsStore.open(path)` (read-only queries).
The quantity is defined in spd/attributions/compute.py.

The names below load on first use (spd.lazy): spd.attributions.config, read when a pipeline file is validated
on a login node, must be importable without importing torch.
"""

from spd.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "AliveMasks": "spd.attributions.alive",
        "Attribution": "spd.attributions.store",
        "AttributionAccumulator": "spd.attributions.compute",
        "AttributionSettings": "spd.attributions.config",
        "AttributionsStore": "spd.attributions.store",
        "Layer": "spd.attributions.nodes",
        "Layout": "spd.attributions.layout",
        "MergeSummary": "spd.attributions.merge",
        "Node": "spd.attributions.nodes",
        "STORE_FILE": "spd.attributions.store",
        "alive_from_harvest": "spd.attributions.alive",
        "all_alive": "spd.attributions.alive",
        "block_key": "spd.attributions.compute",
        "build_layout": "spd.attributions.shard",
        "compute_shard": "spd.attributions.shard",
        "load_shard": "spd.attributions.shard",
        "merge_shards": "spd.attributions.merge",
        "read_harvest_densities": "spd.attributions.alive",
        "shard_path": "spd.attributions.shard",
    },
)

__all__ = [
    "STORE_FILE",
    "AliveMasks",
    "Attribution",
    "AttributionAccumulator",
    "AttributionSettings",
    "AttributionsStore",
    "Layer",
    "Layout",
    "MergeSummary",
    "Node",
    "alive_from_harvest",
    "all_alive",
    "block_key",
    "build_layout",
    "compute_shard",
    "load_shard",
    "merge_shards",
    "read_harvest_densities",
    "shard_path",
]
