"""The harvest store's tables (DuckDB) and the records the read API returns. docs/storage.md explains each.

Components are identified by their flat index `component` (layer offset + index in the layer, in the
decomposition's module order) and by `key` = "<module path>:<index in layer>". Rows are inserted sorted by
component, so DuckDB's per-row-group min/max lets a query for one component skip the rest of the file.
"""

from __future__ import annotations

from dataclasses import dataclass

from spd.duckdb_store import Columns

STORE_FILE = "harvest.duckdb"
STORE_FORMAT = "spd-harvest-store"
STORE_FORMAT_VERSION = 1

TABLES: dict[str, Columns] = {
    "layers": {
        "layer": "VARCHAR PRIMARY KEY",  # decomposed module path
        "layer_order": "INTEGER NOT NULL",  # position in the decomposition's module order
        "offset": "INTEGER NOT NULL",  # flat index of its first component
        "n_components": "INTEGER NOT NULL",
    },
    "components": {
        "component": "INTEGER PRIMARY KEY",  # flat index
        "key": "VARCHAR NOT NULL UNIQUE",  # '<layer>:<index>'
        "layer": "VARCHAR NOT NULL",
        "layer_index": "INTEGER NOT NULL",
        "firing_count": "BIGINT NOT NULL",  # tokens with CI > ci_threshold
        "firing_density": "DOUBLE NOT NULL",  # firing_count / n_tokens
        "mean_ci": "DOUBLE NOT NULL",  # over all tokens
        "mean_ci_firing": "DOUBLE",  # over firing tokens; NULL when it never fires
        "mean_act": "DOUBLE NOT NULL",  # component activation (x.V_c)*||U_c||, over all tokens
        "mean_act_firing": "DOUBLE",  # over firing tokens; NULL when it never fires
        "mean_abs_act": "DOUBLE NOT NULL",  # |component activation| over all tokens
        "n_examples": "INTEGER NOT NULL",  # uniform reservoir size (min(firing_count, k))
        "n_top_examples": "INTEGER NOT NULL",
    },
    "vocab": {
        "token": "INTEGER PRIMARY KEY",
        "text": "VARCHAR NOT NULL",  # the tokenizer's decoding of the single token
        "input_count": "BIGINT NOT NULL",  # tokens with this id
        "output_count": "BIGINT NOT NULL",  # positions where it is among the target's top-m predictions
    },
    "token_stats": {
        "component": "INTEGER NOT NULL",
        "direction": "VARCHAR NOT NULL",  # 'input' (the token at the firing) or 'output' (a top-m prediction)
        "token": "INTEGER NOT NULL",
        "count": "BIGINT NOT NULL",  # firings of the component with this token (never 0: sparse)
        "precision": "DOUBLE NOT NULL",  # count / vocab.{input,output}_count
        "recall": "DOUBLE NOT NULL",  # count / firing_count
        "pmi": "DOUBLE NOT NULL",  # log(count * n_tokens / (firing_count * total))
    },
    "examples": {
        "component": "INTEGER NOT NULL",
        "kind": "VARCHAR NOT NULL",  # 'uniform' (reservoir) or 'top' (largest |activation|)
        "rank": "INTEGER NOT NULL",  # 0.. ; uniform: any prefix is itself a uniform sample; top: by |act| desc
        "tokens": "INTEGER[] NOT NULL",  # window, padding stripped
        "ci": "FLOAT[] NOT NULL",  # this component's CI at each window token
        "act": "FLOAT[] NOT NULL",  # this component's activation at each window token
        "center": "INTEGER NOT NULL",  # index of the firing token in the lists
        "sequence": "BIGINT NOT NULL",  # window id in the split: stream positions [sequence*seq_len, ...)
        "position": "INTEGER NOT NULL",  # firing position inside that window
        "stream_position": "BIGINT NOT NULL",  # position in the split's token stream
        "doc": "INTEGER",  # corpus document id of the firing token (NULL at an EOS)
        "doc_position": "INTEGER",  # token index inside that document
        "batch": "INTEGER NOT NULL",  # global batch index
        "sample_key": "BIGINT NOT NULL",  # the selection key (ascending within kind)
    },
    "cofiring": {
        "component": "INTEGER NOT NULL",
        "other": "INTEGER NOT NULL",  # both orders are stored, other != component
        "count": "BIGINT NOT NULL",  # tokens where both fire (>= cofiring_min_count)
    },
    "tasks": {
        "task": "INTEGER PRIMARY KEY",
        "n_batches": "INTEGER NOT NULL",
        "n_sequences": "BIGINT NOT NULL",
        "n_tokens": "BIGINT NOT NULL",
        "batch_start": "INTEGER NOT NULL",  # owns global batches batch_start, +batch_step, ... < n_batches
        "batch_step": "INTEGER NOT NULL",
        "slice_sha256": "VARCHAR NOT NULL",  # sha256 of its window ids in processing order
        "task_seed": "BIGINT",
        "device": "VARCHAR NOT NULL",
        "cofiring_method": "VARCHAR",  # sparse, int8 or fp32 (all exact: the faster on its first batch); NULL: off
        "kernels": "VARCHAR",  # numba (CPU) or torch: the same per-batch statistics
        "host": "VARCHAR",
        "started_at": "VARCHAR NOT NULL",
        "finished_at": "VARCHAR NOT NULL",
        "seconds": "DOUBLE NOT NULL",
        "tokens_per_s": "DOUBLE",
        "shard_file": "VARCHAR NOT NULL",
        "shard_bytes": "BIGINT NOT NULL",
    },
    "provenance": {
        "format": "VARCHAR NOT NULL",
        "format_version": "INTEGER NOT NULL",
        "n_tokens": "BIGINT NOT NULL",
        "n_batches": "INTEGER NOT NULL",
        "n_sequences": "BIGINT NOT NULL",
        "n_tasks": "INTEGER NOT NULL",
        "n_components": "INTEGER NOT NULL",
        "vocab_size": "INTEGER NOT NULL",
        "seed": "BIGINT NOT NULL",  # stage seed: sampling keys are hashes of (seed, position, component)
        "ci_threshold": "DOUBLE NOT NULL",
        "split": "VARCHAR NOT NULL",
        "seq_len": "INTEGER NOT NULL",
        "batch_size": "INTEGER NOT NULL",
        "dataset_seed": "BIGINT NOT NULL",
        "decomposition": "JSON NOT NULL",  # path, config/model sha256, corpus path + manifest sha256
        "settings": "JSON NOT NULL",  # the harvest config as run
        "code": "JSON NOT NULL",  # package version, spd sources sha256, git commit
        "runtime": "JSON NOT NULL",  # host and library versions of the merge
        "first_task_started_at": "VARCHAR NOT NULL",
        "last_task_finished_at": "VARCHAR NOT NULL",
        "merged_at": "VARCHAR NOT NULL",
        "merge_seconds": "DOUBLE NOT NULL",
    },
}
"""Column specs of the store's tables (column -> DuckDB type and constraints), created by
spd.duckdb_store.create_table."""


@dataclass(frozen=True)
class ComponentSummary:
    component: int
    key: str
    layer: str
    layer_index: int
    firing_count: int
    firing_density: float
    mean_ci: float
    mean_ci_firing: float | None
    mean_act: float
    mean_act_firing: float | None
    mean_abs_act: float
    n_examples: int
    n_top_examples: int


@dataclass(frozen=True)
class ActivationExample:
    """One window around a firing of `component`."""

    component: int
    kind: str
    rank: int
    tokens: list[int]
    ci: list[float]
    act: list[float]
    center: int
    sequence: int
    position: int
    stream_position: int
    doc: int | None
    doc_position: int | None
    batch: int

    def firings(self, ci_threshold: float) -> list[bool]:
        """Which window tokens the component fires on (CI above the harvest's threshold)."""
        return [c > ci_threshold for c in self.ci]


@dataclass(frozen=True)
class TokenStat:
    token: int
    text: str
    count: int
    total: int
    precision: float
    recall: float
    pmi: float


@dataclass(frozen=True)
class CofiringStat:
    other: int
    other_key: str
    count: int
    count_self: int
    count_other: int
    precision: float  # P(other fires | component fires) = count / count_self
    recall: float  # P(component fires | other fires) = count / count_other
    jaccard: float
    pmi: float
