"""Dataset attributions: gradient x activation between components, token inputs and output logits.

Pipeline: `compute_shard` (one array task over a disjoint slice of the data) -> `merge_shards` (token-weighted
mean, top-k reduction, out/attributions.duckdb) -> `AttributionsStore.open(path)` (read-only queries).
The quantity is defined in spd/attributions/compute.py.

The names below load on first use (spd.lazy): spd.attributions.config, read when a pipeline file is validated
on a login node, must be importable without importing torch.
"""

from spd.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spd.attributions.alive": ("AliveMasks", "alive_from_harvest", "all_alive", "read_harvest_densities"),
        "spd.attributions.compute": ("AttributionAccumulator", "block_key"),
        "spd.attributions.config": ("AttributionSettings",),
        "spd.attributions.layout": ("Layout",),
        "spd.attributions.merge": ("MergeSummary", "merge_shards"),
        "spd.attributions.nodes": ("Layer", "Node"),
        "spd.attributions.shard": ("build_layout", "compute_shard", "load_shard", "shard_path"),
        "spd.attributions.store": ("STORE_FILE", "Attribution", "AttributionsStore"),
    },
)
