"""What the report takes from the harvest store: every component's summary, and for alive ones their examples
and token statistics.

Identity, metadata and summaries come through `HarvestStore`. The per-component lists (examples, token stats)
are read for all alive components in three set-based queries on the documented tables (spd/harvest/schema.py)
instead of the store's per-component calls: 10,000 components x 4 calls of a few ms each would take minutes,
one windowed query takes a second. The connection is read-only, like the store's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spd.harvest import HarvestStore
from spd.report.numbers import rounded
from spd.report.options import ReportOptions

PROVENANCE_KEYS = ("n_tokens", "n_sequences", "n_batches", "n_tasks", "seed", "ci_threshold", "split", "seq_len")


def display_token(text: str) -> str:
    """A token's text made visible in one line: newlines, tabs and other control characters get symbols."""
    out = text.replace("\n", "↵").replace("\r", "⏎").replace("\t", "⇥")
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in out)


def visible_token(text: str) -> str:
    """A display token with its spaces shown as middle dots, for places where a token stands alone (lists, the
    table): " 2" and "2" are different tokens and must not look alike."""
    return text.replace(" ", "·")


@dataclass
class HarvestData:
    """The harvest's part of the report; `available=False` with a reason when there is no store to read."""

    available: bool
    reason: str | None = None
    path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    """Every component: key, layer, index, firing count, density, mean CI when firing."""
    alive: list[str] = field(default_factory=list)
    """Keys of alive components, in flat order."""
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)
    """key -> {'scale': max |act| shown, 'top': [...], 'random': [...]}; an example is
    [token ids, activation as % of scale, CI as %, index of the firing token]."""
    token_stats: dict[str, dict[str, list[list[Any]]]] = field(default_factory=dict)
    """key -> {'input'|'output': [[token id, count, precision, recall, pmi], ...]} by PMI (count >= the minimum)."""
    cofiring: dict[str, list[list[Any]]] = field(default_factory=dict)
    """key -> [[other key, Jaccard, tokens where both fire], ...], best Jaccard first."""


def read_harvest(out_dir: Path | None, options: ReportOptions) -> HarvestData:
    """Read the harvest store under `out_dir`; a missing store is reported, never raised."""
    if out_dir is None:
        return HarvestData(available=False, reason="not part of this pipeline")
    try:
        store = HarvestStore.open(out_dir)
    except FileNotFoundError:
        return HarvestData(available=False, reason="no harvest store yet")
    with store:
        provenance = store.provenance()
        data = HarvestData(available=True, path=str(store.path), layers=store.layers())
        data.info = {k: provenance.get(k) for k in PROVENANCE_KEYS}
        data.info["n_components"] = provenance.get("n_components")
        data.info["merged_at"] = provenance.get("merged_at")
        data.info["code"] = provenance.get("code")
        data.info["settings"] = provenance.get("settings")
        for s in store.summaries():
            data.summaries.append(
                {
                    "component": s.component,
                    "key": s.key,
                    "layer": s.layer,
                    "index": s.layer_index,
                    "firing_count": s.firing_count,
                    "density": s.firing_density,
                    "mean_ci_firing": rounded(s.mean_ci_firing),
                }
            )
        alive = sorted(store.alive_components(min_firings=options.min_firings), key=lambda s: s.component)
        data.alive = [s.key for s in alive]
        path = store.path
    data.info["n_alive"] = len(data.alive)
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute("SET enable_progress_bar = false")  # the report prints only its own path
        alive_index = {s.component: s.key for s in alive}
        data.examples = _examples(con, alive_index, options, float(provenance["ci_threshold"]))
        data.token_stats = _token_stats(con, alive_index, options.token_stats, options.pmi_min_count)
        data.cofiring = _cofiring(con, alive_index, options.cofiring)
    return data


def tokens_used(data: HarvestData) -> set[int]:
    """Token ids in the embedded examples and token lists."""
    used = {t for ex in data.examples.values() for kind in ("top", "random") for e in ex[kind] for t in e[0]}
    used |= {row[0] for stats in data.token_stats.values() for rows in stats.values() for row in rows}
    return used


def token_texts(data: HarvestData, tokens: set[int]) -> dict[int, str]:
    """Display text of `tokens` from the store's vocabulary (empty without a store)."""
    if not data.available or not data.path or not tokens:
        return {}
    with duckdb.connect(data.path, read_only=True) as con:
        rows = con.execute("SELECT token, text FROM vocab WHERE token IN (SELECT unnest(?))", [sorted(tokens)])
        return {int(t): display_token(text) for t, text in rows.fetchall()}


def _flat(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (all values, row start offsets with a final end)."""
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return values, np.concatenate([[0], np.cumsum(lengths)])


def quantize_ci(ci: np.ndarray, threshold: float) -> np.ndarray:
    """CI as integer percent that keeps which side of the firing threshold each value is on: `q > 100 *
    threshold` exactly when `ci > threshold` (a value within 1% of the threshold moves by at most 1)."""
    q = np.rint(100 * ci).astype(np.int64)
    limit = 100 * threshold
    firing = ci > threshold
    q[firing & (q <= limit)] = int(np.floor(limit)) + 1
    q[~firing & (q > limit)] = int(np.floor(limit))
    return q


def _examples(
    con: duckdb.DuckDBPyConnection, alive: dict[int, str], options: ReportOptions, ci_threshold: float
) -> dict[str, Any]:
    """The first ranks of each kind for every alive component (ranks are ordered: a prefix of 'uniform' is a
    uniform sample, of 'top' the largest |activation|). Activations are stored as integer percent of the
    component's largest |activation| among its shown examples (`scale`), CI as integer percent (see
    `quantize_ci`): enough to shade and to read values to two digits, at a third of the size. Vectorised:
    ~100k windows in a second."""
    out: dict[str, dict[str, Any]] = {key: {"scale": None, "top": [], "random": []} for key in alive.values()}
    table = con.sql(
        "SELECT component, kind, tokens, ci, act, center FROM examples "
        "WHERE (kind = 'top' AND rank < ?) OR (kind = 'uniform' AND rank < ?) ORDER BY component, kind, rank",
        params=[options.top_examples, options.random_examples],
    ).to_arrow_table()
    if table.num_rows == 0:
        return out
    component = table["component"].to_numpy()
    kinds = table["kind"].to_pylist()
    centers = table["center"].to_numpy().tolist()
    tokens, offsets = _flat(table["tokens"])
    ci, _ = _flat(table["ci"])
    act, _ = _flat(table["act"])
    starts = offsets[:-1]
    row_max = np.maximum.reduceat(np.abs(act), starts) if len(act) else np.zeros(len(starts))
    first = np.flatnonzero(np.r_[True, component[1:] != component[:-1]])  # rows are sorted by component
    comp_max = np.maximum.reduceat(row_max, first)
    comp_max[comp_max == 0] = 1.0
    row_scale = np.repeat(comp_max, np.diff(np.r_[first, len(component)]))
    act_q = np.rint(100 * act / np.repeat(row_scale, np.diff(offsets))).astype(np.int64).tolist()
    ci_q = quantize_ci(ci, ci_threshold).tolist()
    token_list = tokens.astype(np.int64).tolist()
    for row, (c, kind) in enumerate(zip(component.tolist(), kinds, strict=True)):
        key = alive.get(c)
        if key is None:
            continue
        lo, hi = offsets[row], offsets[row + 1]
        entry = out[key]
        entry["scale"] = rounded(float(row_scale[row]))
        entry["top" if kind == "top" else "random"].append([token_list[lo:hi], act_q[lo:hi], ci_q[lo:hi], centers[row]])
    return out


def _token_stats(con: duckdb.DuckDBPyConnection, alive: dict[int, str], k: int, min_count: int) -> dict[str, Any]:
    """Top-k tokens by PMI among those seen at least `min_count` times with the component (ties by token id, as
    HarvestStore.token_stats orders them), both directions."""
    out: dict[str, dict[str, list[list[Any]]]] = {key: {"input": [], "output": []} for key in alive.values()}
    if k <= 0:
        return out
    rows = con.execute(
        'SELECT component, direction, token, count, "precision", recall, pmi FROM token_stats WHERE count >= ? '
        "QUALIFY row_number() OVER (PARTITION BY component, direction ORDER BY pmi DESC, token) <= ? "
        "ORDER BY component, direction, pmi DESC, token",
        [min_count, k],
    ).fetchall()
    for component, direction, token, count, precision, recall, pmi in rows:
        key = alive.get(component)
        if key is not None:
            out[key][direction].append(
                [int(token), int(count), rounded(precision, 3), rounded(recall, 3), rounded(pmi, 3)]
            )
    return out


def _cofiring(con: duckdb.DuckDBPyConnection, alive: dict[int, str], k: int) -> dict[str, list[list[Any]]]:
    """The k components firing most often together with each alive one, by Jaccard (tokens where both fire /
    tokens where either fires; ties by component), as HarvestStore.cofiring ranks them, in one windowed query.
    The store keeps pairs that co-fired at least its cofiring_min_count times: rarer pairs are not listed."""
    out: dict[str, list[list[Any]]] = {key: [] for key in alive.values()}
    if k <= 0 or not alive:
        return out
    rows = con.execute(
        "SELECT x.component, o.key, x.count, x.count / (s.firing_count + o.firing_count - x.count) AS jaccard "
        "FROM cofiring x JOIN components s ON s.component = x.component JOIN components o ON o.component = x.other "
        "QUALIFY row_number() OVER (PARTITION BY x.component ORDER BY jaccard DESC, x.other) <= ? "
        "ORDER BY x.component, jaccard DESC, x.other",
        [k],
    ).fetchall()
    for component, other, count, jaccard in rows:
        key = alive.get(component)
        if key is not None:
            out[key].append([other, rounded(jaccard, 3), int(count)])
    return out
