"""The merge: check every expected shard is there, intact and consistent, fold them in one at a time, build the store.

Peak memory is the running totals plus one shard, whatever the number of tasks: a shard is loaded, added
and dropped before the next is read. Co-firing pairs are the exception: they are summed by DuckDB while the
store is built (out of core, under a memory limit), since their union can dwarf everything else at large C. Sums are exact (int64 counts; fp64 float sums), and example sets are
merged exactly (bottom-k of the union, spd.harvest.reservoir), so the store does not depend on the number
of tasks beyond fp64 rounding in the float means.

Before any shard is used, every one is checked against the size and sha256 its task recorded
(spd.shard_checksums). A missing, truncated, altered or unreadable shard raises an error that names the file and
carries `invalid_tasks`, so the orchestrator drops those tasks' markers and `rerun` redoes exactly them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from spd.harvest.counters import make_counter
from spd.harvest.nonzero import split_flat_index
from spd.harvest.reservoir import ExampleSelection
from spd.harvest.shard import SUM_NAMES, ShardData, read_shard, shard_path
from spd.shard_checksums import ShardsMissing, check_consistent, load_task_shard, require_shards

# Meta fields that must agree between shards of one harvest, and the data-slice fields shared by all tasks.
CONSISTENT_META = ("n_tasks", "seed", "settings", "vocab_size", "layers", "decomposition")
SHARED_SLICE = ("split", "seq_len", "batch_size", "dataset_seed", "n_batches", "n_tasks")
# Where a task found the decomposition and its corpus: a run moved or copied since its first tasks ran reads
# the same files (same digests) under other paths, and its repaired tasks must merge with the old ones.
LOCATION_FIELDS = ("path", "corpus_path")


def comparable_meta(key: str, value: Any) -> Any:
    """A shard meta field as shards of one harvest must agree on it: the decomposition by its digests only."""
    if key == "decomposition" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in LOCATION_FIELDS}
    return value


WHAT = "harvest merge"


class ShardMissingError(ShardsMissing):
    """The merge refuses to build a store from an incomplete set of shards (a FileNotFoundError)."""


def verified_shards(out_dir: Path, n_tasks: int) -> list[Path]:
    """Paths of all n_tasks shards once each is present (else ShardMissingError naming every missing one) and
    matches its checksum record (else ShardsCorrupt naming them)."""
    paths = [shard_path(out_dir, i) for i in range(n_tasks)]
    hint = "; rerun those tasks (python run.py rerun <run> --stage harvest) before merging"
    require_shards(paths, WHAT, hint, ShardMissingError)
    return paths


def load_verified_shard(path: Path, task: int, n_tasks: int) -> ShardData:
    """Parse a verified shard (its pairs are summed from the file by the store builder, not loaded here)."""
    return load_task_shard(
        path,
        task,
        n_tasks,
        WHAT,
        lambda p: read_shard(p, cofiring=False),
        lambda shard: (shard.meta.get("task"), shard.meta.get("n_tasks")),
    )


class MergedHarvest:
    """Running totals over shards (CPU)."""

    def __init__(self, first_meta: dict[str, Any]) -> None:
        self.meta = first_meta
        self.data = {k: first_meta["slice"][k] for k in SHARED_SLICE}  # what every task's slice has in common
        settings = first_meta["settings"]
        self.C = sum(layer["C"] for layer in first_meta["layers"])
        self.V = int(first_meta["vocab_size"])
        window = 2 * int(settings["context_tokens_per_side"]) + 1
        self.n_tokens = 0
        self.n_batches = 0
        self.n_sequences = 0
        self.tasks: list[dict[str, Any]] = []
        self.firing_count = torch.zeros(self.C, dtype=torch.int64)
        self.sums = {name: torch.zeros(self.C, dtype=torch.float64) for name in SUM_NAMES}
        self.input_total = torch.zeros(self.V, dtype=torch.int64)
        self.output_total = torch.zeros(self.V, dtype=torch.int64)
        self.input_counts = make_counter(self.C * self.V)
        self.output_counts = make_counter(self.C * self.V)
        # co-firing pairs are not summed here: the store builder aggregates them from these shards in DuckDB, on
        # disk, so the merge never holds every distinct pair in memory (spd.harvest.store_builder._cofiring)
        self.cofire_shards: list[Path] = []
        self.uniform = ExampleSelection(self.C, int(settings["examples_per_component"]), window)
        self.top = ExampleSelection(self.C, int(settings["top_examples_per_component"]), window)

    def check(self, meta: dict[str, Any], path: Path) -> None:
        check_consistent(WHAT, path, self.meta, meta, CONSISTENT_META, comparable_meta)
        data = {k: meta["slice"][k] for k in SHARED_SLICE}
        if data != self.data:
            raise ValueError(f"harvest merge: {path.name} read other data than the first shard: {data} vs {self.data}")

    def add(self, shard: ShardData, path: Path) -> None:
        meta = shard.meta
        self.check(meta, path)
        self.n_tokens += int(meta["n_tokens"])
        self.n_batches += int(meta["n_batches"])
        self.n_sequences += int(meta["n_sequences"])
        self.tasks.append({**meta, "shard_file": path.name, "shard_bytes": path.stat().st_size})
        self.firing_count += shard.firing_count
        for name in SUM_NAMES:
            self.sums[name] += shard.sums[name]
        self.input_total += shard.input_total
        self.output_total += shard.output_total
        V = self.V
        self.input_counts.add_counts(shard.input_component.long() * V + shard.input_token.long(), shard.input_count)
        self.output_counts.add_counts(shard.output_component.long() * V + shard.output_token.long(), shard.output_count)
        self.cofire_shards.append(path)
        self.uniform.offer_rows(shard.uniform_component.long(), shard.uniform_rows)
        self.top.offer_rows(shard.top_component.long(), shard.top_rows)

    def token_counts(self, direction: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(component, token, count) of the non-zero input or output counts, sorted by (component, token)."""
        counter = self.input_counts if direction == "input" else self.output_counts
        comp, tok = split_flat_index(counter.keys(), self.V)
        return comp, tok, counter.counts()


def merge_shards(out_dir: Path, n_tasks: int, log=print) -> MergedHarvest:
    """Verify every shard of out_dir, then fold them into running totals, one shard in memory at a time."""
    merged: MergedHarvest | None = None
    paths = verified_shards(out_dir, n_tasks)  # refuse before doing any work
    log(f"verified the checksums of {n_tasks} shard(s)")
    for task, path in enumerate(paths):
        started = time.monotonic()
        shard = load_verified_shard(path, task, n_tasks)
        if merged is None:
            merged = MergedHarvest(shard.meta)
        merged.add(shard, path)
        del shard
        log(f"merged {path.name} in {time.monotonic() - started:.2f}s")
    assert merged is not None  # n_tasks >= 1
    return merged


def merge_harvest(out_dir: Path, n_tasks: int, decomposition_dir: Path, log=print) -> Path:
    """Check and merge every shard of out_dir, then build out_dir/harvest.duckdb (atomically). Returns it."""
    from spd.harvest.store_builder import build_store

    started = time.monotonic()
    out_dir = Path(out_dir)
    merged = merge_shards(out_dir, n_tasks, log)  # checks every shard before it uses any
    # The store names the decomposition where it is now, whatever path the first shard's task saw.
    merged.meta["decomposition"] = {**merged.meta["decomposition"], "path": str(Path(decomposition_dir).resolve())}
    path = build_store(out_dir, merged, Path(decomposition_dir), merge_started=started, log=log)
    log(f"harvest store {path} built in {time.monotonic() - started:.1f}s")
    return path
