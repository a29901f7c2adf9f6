"""What the report takes from the attributions store: each component's strongest sources and targets.

`AttributionsStore` checks the file's format and gives its metadata; the lists are read for every component
in two windowed queries over its documented `layers`/`edges` tables (spd/attributions/store.py), because a
query per component (its `top_sources`/`top_targets`) would take minutes at 10,000 components.

Ranking is by |value| over the stored edges of a node, exact for k <= the store's top_k: the store keeps
each node's top_k most positive and top_k most negative partners of each kind, and any partner among the
k largest |value| overall is among those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from spd.attributions.store import STORE_FILE, AttributionsStore
from spd.report.numbers import rounded
from spd.report.options import ReportOptions


@dataclass
class AttributionsData:
    """key -> {'in': [[source node, value], ...], 'out': [[target node, value], ...]}; nodes are
    '<module>:<index>' (component), 'token:<id>' (input token) or 'output:<id>' (output logit)."""

    available: bool
    reason: str | None = None
    path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    edges: dict[str, dict[str, list[list[Any]]]] = field(default_factory=dict)

    def token_ids(self) -> set[int]:
        ids = set()
        for lists in self.edges.values():
            for rows in lists.values():
                for node, _ in rows:
                    kind, _, index = node.partition(":")
                    if kind in ("token", "output"):
                        ids.add(int(index))
        return ids


def _node_key(kind: str, module: str, index: int) -> str:
    return f"{module}:{index}" if kind == "component" else f"{kind}:{index}"


def read_attributions(out_dir: Path | None, options: ReportOptions) -> AttributionsData:
    """Read the attributions store under `out_dir`; a missing store is reported, never raised."""
    if out_dir is None:
        return AttributionsData(available=False, reason="not part of this pipeline")
    path = Path(out_dir) / STORE_FILE if Path(out_dir).is_dir() else Path(out_dir)
    try:
        store = AttributionsStore.open(path)
    except FileNotFoundError:
        return AttributionsData(available=False, reason="no attributions store yet")
    with store:
        top_k = store.top_k
        info = {"top_k": top_k, "n_tokens": store.n_tokens, "definition": store.meta.get("definition")}
    data = AttributionsData(available=True, path=str(path), info=info)
    k = min(options.attributions, top_k)
    if k <= 0:
        return data
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute("SET enable_progress_bar = false")  # the report prints only its own path
        rows = con.execute("SELECT layer_id, kind, module FROM layers").fetchall()
        layers = {lid: (kind, module) for lid, kind, module in rows}
        for direction, me, other in (("in", "target", "source"), ("out", "source", "target")):
            rows = con.execute(
                f"SELECT {me}_layer, {me}_index, {other}_layer, {other}_index, value FROM edges "
                f"WHERE {me}_layer IN (SELECT layer_id FROM layers WHERE kind = 'component') "
                f"QUALIFY row_number() OVER (PARTITION BY {me}_layer, {me}_index "
                f"ORDER BY abs(value) DESC, {other}_layer, {other}_index) <= ? "
                f"ORDER BY {me}_layer, {me}_index, abs(value) DESC, {other}_layer, {other}_index",
                [k],
            ).fetchall()
            for me_layer, me_index, other_layer, other_index, value in rows:
                key = _node_key(*layers[me_layer], me_index)
                node = _node_key(*layers[other_layer], other_index)
                data.edges.setdefault(key, {"in": [], "out": []})[direction].append([node, rounded(value)])
    return data
