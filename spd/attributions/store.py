"""The attributions store (out/attributions.duckdb): schema, its one writer and the read API.

What is stored: not the dense sources x targets matrix ((vocab + C) x (C + vocab) values, about 32 GB of
float32 at 40K components and a 50K vocab) but, for every node, its `top_k` most positive and `top_k` most
negative partners, separately per partner kind, deduplicated into one edge table:

    target (component or output logit) -> its top-k token sources and its top-k component sources
    source (token or component)        -> its top-k component targets and its top-k output-logit targets

so at most 4 * top_k edges per node (top_k = 50 at that scale: at most 36M rows). Queries within those
lists are exact; a pair outside every list is unknown (`value` returns None). Structurally unconnected layer
pairs (no gradient path) and dead components (alive masks) have no edges at all.

Tables:
    meta(key VARCHAR, value VARCHAR)        JSON values: definition, n_tokens, n_batches, num_tasks, top_k,
                                            settings, layout (modules, sizes, connections, alive), alive_source,
                                            decomposition, stage seed
    layers(layer_id SMALLINT, kind VARCHAR, module VARCHAR, n_nodes INTEGER)
                                            0 = token layer (embedding module), 1..M = decomposed modules in
                                            forward order, M + 1 = output layer (unembedding module)
    connections(source_layer SMALLINT, target_layer SMALLINT)   layer pairs with a gradient path
    components(layer_id SMALLINT, module VARCHAR, component INTEGER, alive BOOLEAN, density DOUBLE)
                                            density NULL = unknown (no harvest, or not measured)
    edges(source_layer SMALLINT, source_index INTEGER, target_layer SMALLINT, target_index INTEGER,
          value DOUBLE)                     sorted by (target_layer, target_index, value); index = token id
                                            for token/output layers, component index otherwise
    view edges_named: edges joined with layers (source_kind, source_module, ..., value)

Written once by the merge through spd.duckdb_store: into a temp file in the same directory, CHECKPOINT, closed,
renamed (no WAL is ever left). Readers open it read_only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np

from spd.attributions.layout import Layout
from spd.attributions.nodes import SOURCE_KINDS, TARGET_KINDS, Node, NodeKind
from spd.duckdb_store import ReadOnlyStore, atomic_duckdb, create_table, insert_columns, insert_rows, store_file

STORE_FILE = "attributions.duckdb"
STORE_FORMAT = "spd-attributions/1"
DEFINITION = (
    "attr[s, t] = (1/N) sum_batches sum_{b,p'} d(sum_{b,p} P_t[b,p]) / dA_s[b,p'] * A_s[b,p']: gradient x activation, "
    "signed, mean per token position, from a forward with every component mask = 1 and every decomposed module cut "
    "into a leaf (direct edges only). Targets: component activations x V (component) or the unembedding input "
    "projected on W_U[v] (output logit v). Sources: the leaf component activations, or the token embedding output "
    "summed over d_model and credited to the token id at that position (token)."
)
Sign = Literal["positive", "negative"]


@dataclass(frozen=True)
class EdgeArrays:
    """Columns of the edges table (numpy, equal length)."""

    source_layer: np.ndarray
    source_index: np.ndarray
    target_layer: np.ndarray
    target_index: np.ndarray
    value: np.ndarray


@dataclass(frozen=True)
class Attribution:
    source: Node
    target: Node
    value: float


def _layer_rows(layout: Layout) -> list[tuple[int, str, str, int]]:
    rows = [(0, "token", layout.embedding_module, layout.vocab_size)]
    rows += [
        (i + 1, "component", m, c) for i, (m, c) in enumerate(zip(layout.modules, layout.n_components, strict=True))
    ]
    rows.append((len(layout.modules) + 1, "output", layout.unembedding_module, layout.vocab_size))
    return rows


_TABLES: dict[str, dict[str, str]] = {
    "meta": {"key": "VARCHAR PRIMARY KEY", "value": "VARCHAR NOT NULL"},
    "layers": {"layer_id": "SMALLINT PRIMARY KEY", "kind": "VARCHAR", "module": "VARCHAR", "n_nodes": "INTEGER"},
    "connections": {"source_layer": "SMALLINT", "target_layer": "SMALLINT"},
    "components": {
        "layer_id": "SMALLINT",
        "module": "VARCHAR",
        "component": "INTEGER",
        "alive": "BOOLEAN",
        "density": "DOUBLE",
    },
    "edges": {
        "source_layer": "SMALLINT",
        "source_index": "INTEGER",
        "target_layer": "SMALLINT",
        "target_index": "INTEGER",
        "value": "DOUBLE",
    },
}
"""Column specs of the store's tables (the module docstring says what they hold)."""


def write_store(
    path: Path, layout: Layout, edges: EdgeArrays, density: dict[str, list[float | None]], meta: dict[str, Any]
) -> None:
    """Build the store at `path` atomically (spd.duckdb_store: temp file, checkpoint, close, rename)."""
    layer_rows = _layer_rows(layout)
    layer_id = {(kind, module): lid for lid, kind, module, _ in layer_rows}
    with atomic_duckdb(path) as con:
        for table, spec in _TABLES.items():
            create_table(con, table, spec)
        meta_rows = [("format", json.dumps(STORE_FORMAT))] + [(k, json.dumps(v)) for k, v in sorted(meta.items())]
        connections = [
            (layer_id[tuple(s.split(":", 1))], layer_id[tuple(t.split(":", 1))]) for s, t in layout.connections
        ]
        components = [
            (i + 1, m, c, layout.alive[i][c], density.get(m, [None] * n)[c])
            for i, (m, n) in enumerate(zip(layout.modules, layout.n_components, strict=True))
            for c in range(n)
        ]
        for table, rows in (
            ("meta", meta_rows),
            ("layers", layer_rows),
            ("connections", connections),
            ("components", components),
        ):
            insert_rows(con, table, _TABLES[table], (dict(zip(_TABLES[table], row, strict=True)) for row in rows))
        columns = {
            "source_layer": edges.source_layer.astype(np.int16),
            "source_index": edges.source_index.astype(np.int32),
            "target_layer": edges.target_layer.astype(np.int16),
            "target_index": edges.target_index.astype(np.int32),
            "value": edges.value.astype(np.float64),
        }
        insert_columns(
            con, "edges", columns, order_by="target_layer, target_index, value DESC, source_layer, source_index"
        )
        con.execute(
            "CREATE VIEW edges_named AS SELECT s.kind AS source_kind, s.module AS source_module, e.source_index, "
            "t.kind AS target_kind, t.module AS target_module, e.target_index, e.value FROM edges e "
            "JOIN layers s ON s.layer_id = e.source_layer JOIN layers t ON t.layer_id = e.target_layer"
        )


class AttributionsStore(ReadOnlyStore):
    """Read-only view of an attributions store: top-k partners of a node and the value of a pair.

    Nodes are `Node` objects or string keys: '<module>:<index>' (component), 'token:<id>', 'output:<id>'.
    Rankings are exact for k <= top_k (asking for more raises); each partner kind is ranked on its own and
    `kinds` picks which are merged into one ranking. A dead component has no edges (empty lists).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        super().__init__(con, path)
        self.meta: dict[str, Any] = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta").fetchall()}
        if self.meta.get("format") != STORE_FORMAT:
            raise ValueError(f"{path} is not an attributions store (format {self.meta.get('format')!r})")
        self.layout = Layout.from_dict(self.meta["layout"])
        rows = con.execute("SELECT layer_id, kind, module, n_nodes FROM layers ORDER BY layer_id").fetchall()
        self._layer_ids = {(kind, module): lid for lid, kind, module, _ in rows}
        self._layers = {lid: (kind, module, n) for lid, kind, module, n in rows}

    @classmethod
    def open(cls, path: str | Path) -> AttributionsStore:
        """Open a store file, or the attributions.duckdb inside an attributions out/ (or stage) directory."""
        # open_read_only closes the connection again if it is not an attributions store
        return cls.open_read_only(store_file(path, STORE_FILE, "attributions"))

    # --- facts ---------------------------------------------------------------------------------------

    @property
    def top_k(self) -> int:
        return int(self.meta["top_k"])

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    def node(self, key: str | Node) -> Node:
        """Resolve a key to a Node and check it exists in this store."""
        node = (
            key
            if isinstance(key, Node)
            else Node.parse(key, self.layout.embedding_module, self.layout.unembedding_module)
        )
        lid = self._layer_ids.get((node.kind, node.module))
        if lid is None:
            known = sorted(f"{k}:{m}" for k, m in self._layer_ids)
            raise KeyError(f"{node.key}: no {node.kind} layer {node.module!r} in this store (layers: {known})")
        if node.index >= self._layers[lid][2]:
            raise KeyError(f"{node.key}: index out of range (layer has {self._layers[lid][2]} nodes)")
        return node

    def is_alive(self, key: str | Node) -> bool:
        node = self.node(key)
        return node.kind != "component" or self.layout.alive[self.layout.modules.index(node.module)][node.index]

    def connected_layers(self) -> list[tuple[str, str]]:
        """(source layer key, target layer key) pairs with a gradient path, e.g. ('token:embed', 'component:...')."""
        return list(self.layout.connections)

    # --- queries -------------------------------------------------------------------------------------

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.top_k:
            raise ValueError(f"k={k}: this store keeps the top {self.top_k} per node; rerun with a larger top_k")

    def _layer_filter(self, kinds: Sequence[NodeKind], allowed: Sequence[NodeKind]) -> list[int]:
        bad = set(kinds) - set(allowed)
        if bad:
            raise ValueError(f"kinds {sorted(bad)} are not valid here (choose from {list(allowed)})")
        return [lid for (kind, _), lid in self._layer_ids.items() if kind in kinds]

    def _node_of(self, layer: int, index: int) -> Node:
        kind, module, _ = self._layers[layer]
        return Node(kind, module, int(index))

    def _ranked(self, fixed: str, node: Node, other: str, layers: list[int], k: int, sign: Sign) -> list[tuple]:
        if sign not in ("positive", "negative"):
            raise ValueError(f"sign must be 'positive' or 'negative', got {sign!r}")
        if not layers:
            return []
        cmp, order = (">", "DESC") if sign == "positive" else ("<", "ASC")
        marks = ", ".join("?" for _ in layers)
        return self._con.execute(
            f"SELECT {other}_layer, {other}_index, value FROM edges WHERE {fixed}_layer = ? AND {fixed}_index = ? "
            f"AND value {cmp} 0 AND {other}_layer IN ({marks}) ORDER BY value {order}, {other}_layer, {other}_index "
            "LIMIT ?",
            [self._layer_ids[(node.kind, node.module)], node.index, *layers, k],
        ).fetchall()

    def top_sources(
        self, target: str | Node, k: int = 10, sign: Sign = "positive", kinds: Sequence[NodeKind] = SOURCE_KINDS
    ) -> list[Attribution]:
        """The k sources with the largest (positive) or most negative attributions to `target`."""
        node = self.node(target)
        if node.kind not in TARGET_KINDS:
            raise ValueError(f"{node.key} is a {node.kind} node, never a target")
        self._check_k(k)
        rows = self._ranked("target", node, "source", self._layer_filter(kinds, SOURCE_KINDS), k, sign)
        return [Attribution(self._node_of(layer, i), node, float(v)) for layer, i, v in rows]

    def top_targets(
        self, source: str | Node, k: int = 10, sign: Sign = "positive", kinds: Sequence[NodeKind] = TARGET_KINDS
    ) -> list[Attribution]:
        """The k targets `source` attributes most positively (or negatively) to; outputs are logits of tokens."""
        node = self.node(source)
        if node.kind not in SOURCE_KINDS:
            raise ValueError(f"{node.key} is an {node.kind} node, never a source")
        self._check_k(k)
        rows = self._ranked("source", node, "target", self._layer_filter(kinds, TARGET_KINDS), k, sign)
        return [Attribution(node, self._node_of(layer, i), float(v)) for layer, i, v in rows]

    def value(self, source: str | Node, target: str | Node) -> float | None:
        """The stored attribution of a pair, or None when it is in no top-k list (or the layers do not connect)."""
        s, t = self.node(source), self.node(target)
        row = self._con.execute(
            "SELECT value FROM edges WHERE source_layer = ? AND source_index = ? AND target_layer = ? AND target_index = ?",
            [self._layer_ids[(s.kind, s.module)], s.index, self._layer_ids[(t.kind, t.module)], t.index],
        ).fetchone()
        return None if row is None else float(row[0])
