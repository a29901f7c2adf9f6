"""Dataset attributions: gradient x activation between components, token inputs and output logits.

Pipeline: `compute_shard` (one array task over a disjoint slice of the data) -> `merge_shards` (token-weighted
mean, top-k reduction, out/attributions.duckdb) -> `AttributionsStore.open(path)` (read-only queries).
The quantity is defined in spd/attributions/compute.py.
"""

from spd.attributions.alive import AliveMasks, alive_from_harvest, all_alive, read_harvest_densities
from spd.attributions.compute import AttributionAccumulator, block_key
from spd.attributions.config import AttributionSettings
from spd.attributions.layout import Layout
from spd.attributions.merge import MergeSummary, merge_shards
from spd.attributions.nodes import Layer, Node
from spd.attributions.shard import build_layout, compute_shard, load_shard, shard_path
from spd.attributions.store import STORE_FILE, Attribution, AttributionsStore

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
