"""Write merged harvest totals into out/harvest.duckdb with spd.duckdb_store: temp file, CHECKPOINT, close, rename.

The file appears under its final name only complete and closed: DuckDB writes `.harvest.duckdb.<pid>.<random>.tmp`
(and its `.wal`); atomic_duckdb checkpoints and closes it, checks no WAL is left, and os.replace's it into place.
A killed merge leaves only temp files, which the next merge attempt deletes. A full disk deletes the temp files
and raises StoreDiskFullError (spd.duckdb_store) naming the store and the filesystem's free space, so the failure
record says what happened instead of DuckDB's commit error. Between build steps the merge calls the test-only
fault point of spd.harvest.faults (a no-op unless a test sets its environment variable).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import duckdb
import numpy as np
import torch
from tokenizers import Tokenizer

from spd.data.source import TokenSource
from spd.duckdb_store import atomic_duckdb, create_table, insert_columns, insert_rows
from spd.harvest.faults import store_build_fault_point
from spd.harvest.merge import MergedHarvest
from spd.harvest.provenance import code_version, now_iso, runtime
from spd.harvest.reservoir import ExampleSelection
from spd.harvest.schema import STORE_FILE, STORE_FORMAT, STORE_FORMAT_VERSION, TABLES
from spd.harvest.shard import cofiring_chunks
from spd.harvest.task import decomposition_corpus
from spd.harvest.windows import PAD_TOKEN
from spd.models import decomposition_tokenizer_path

EXAMPLE_CHUNK = 50_000  # example rows converted to Python lists per insert
DISK_FULL_REMEDY = (
    "the shards are intact: free some space, then rerun the merge (python run.py rerun <run> --stage harvest)"
)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _object_rows(array: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Row i of a 2-D array sliced to [lo[i], hi[i]) as an object array of 1-D arrays (DuckDB LIST)."""
    out = np.empty(len(array), dtype=object)
    for i in range(len(array)):
        out[i] = array[i, lo[i] : hi[i]]
    return out


def _layers_and_components(con: duckdb.DuckDBPyConnection, merged: MergedHarvest) -> None:
    layers = merged.meta["layers"]
    insert_columns(
        con,
        "layers",
        {
            "layer": np.array([x["name"] for x in layers], dtype=object),
            "layer_order": np.arange(len(layers), dtype=np.int32),
            "offset": np.array([x["offset"] for x in layers], dtype=np.int32),
            "n_components": np.array([x["C"] for x in layers], dtype=np.int32),
        },
    )
    layer_of = np.concatenate([np.full(x["C"], i) for i, x in enumerate(layers)])
    layer_index = np.concatenate([np.arange(x["C"]) for x in layers])
    names = np.array([x["name"] for x in layers], dtype=object)[layer_of]
    count = _np(merged.firing_count).astype(np.int64)
    n = max(merged.n_tokens, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_firing = {k: _np(merged.sums[k]) / count for k in ("ci_sum_firing", "act_sum_firing")}
    insert_columns(
        con,
        "components",
        {
            "component": np.arange(merged.C, dtype=np.int32),
            "key": np.array([f"{name}:{i}" for name, i in zip(names, layer_index, strict=True)], dtype=object),
            "layer": names,
            "layer_index": layer_index.astype(np.int32),
            "firing_count": count,
            "firing_density": count / n,
            "mean_ci": _np(merged.sums["ci_sum"]) / n,
            "mean_ci_firing": np.where(count > 0, per_firing["ci_sum_firing"], np.nan),  # NaN -> NULL
            "mean_act": _np(merged.sums["act_sum"]) / n,
            "mean_act_firing": np.where(count > 0, per_firing["act_sum_firing"], np.nan),
            "mean_abs_act": _np(merged.sums["act_abs_sum"]) / n,
            "n_examples": _np(merged.uniform.filled()).astype(np.int32),
            "n_top_examples": _np(merged.top.filled()).astype(np.int32),
        },
    )


def _vocab(con: duckdb.DuckDBPyConnection, merged: MergedHarvest, tokenizer: Tokenizer) -> None:
    insert_columns(
        con,
        "vocab",
        {
            "token": np.arange(merged.V, dtype=np.int32),
            "text": np.array([tokenizer.decode([t], skip_special_tokens=False) for t in range(merged.V)], dtype=object),
            "input_count": _np(merged.input_total),
            "output_count": _np(merged.output_total),
        },
    )


def _token_stats(con: duckdb.DuckDBPyConnection, merged: MergedHarvest) -> None:
    firing = _np(merged.firing_count).astype(np.float64)
    for direction, totals in (("input", merged.input_total), ("output", merged.output_total)):
        comp, tok, count = (_np(t) for t in merged.token_counts(direction))
        total = _np(totals).astype(np.float64)[tok]
        f = firing[comp]
        countf = count.astype(np.float64)
        insert_columns(
            con,
            "token_stats",
            {
                "component": comp.astype(np.int32),
                "direction": np.full(len(comp), direction, dtype=object),
                "token": tok.astype(np.int32),
                "count": count,
                "precision": countf / total,
                "recall": countf / f,
                "pmi": np.log(countf * merged.n_tokens / (f * total)),
            },
        )


def _doc_lookup(corpus: TokenSource, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    docs = sorted(corpus.documents(split), key=lambda d: d["stream_start"])
    starts = np.array([d["stream_start"] for d in docs], dtype=np.int64)
    ids = np.array([d["doc"] for d in docs], dtype=np.int64)
    lengths = np.array([d["n_tokens"] for d in docs], dtype=np.int64)
    return starts, ids, lengths


def _examples(con: duckdb.DuckDBPyConnection, merged: MergedHarvest, corpus: TokenSource) -> None:
    spec = merged.data
    seq_len, side = int(spec["seq_len"]), int(merged.meta["settings"]["context_tokens_per_side"])
    doc_starts, doc_ids, doc_lengths = _doc_lookup(corpus, spec["split"])
    selections: list[tuple[str, ExampleSelection]] = [("uniform", merged.uniform), ("top", merged.top)]
    for kind, selection in selections:
        comp_t, rank_t, rows = selection.flat()
        comp, rank = _np(comp_t), _np(rank_t)
        tokens, ci, act = _np(rows.tokens), _np(rows.ci), _np(rows.act)
        sequence, position, batch, key = _np(rows.sequence), _np(rows.position), _np(rows.batch), _np(rows.key)
        valid = tokens != PAD_TOKEN
        lo = valid.argmax(axis=1)  # windows are contiguous: padding only at the ends
        hi = tokens.shape[1] - valid[:, ::-1].argmax(axis=1)
        stream_position = sequence * seq_len + position
        k = np.searchsorted(doc_starts, stream_position, side="right") - 1
        in_doc = (k >= 0) & (stream_position - doc_starts[np.maximum(k, 0)] < doc_lengths[np.maximum(k, 0)])
        doc = np.ma.masked_array(doc_ids[np.maximum(k, 0)], mask=~in_doc)
        doc_position = np.ma.masked_array(stream_position - doc_starts[np.maximum(k, 0)], mask=~in_doc)
        for s in range(0, len(comp), EXAMPLE_CHUNK):
            e = slice(s, s + EXAMPLE_CHUNK)
            insert_columns(
                con,
                "examples",
                {
                    "component": comp[e].astype(np.int32),
                    "kind": np.full(len(comp[e]), kind, dtype=object),
                    "rank": rank[e].astype(np.int32),
                    "tokens": _object_rows(tokens[e], lo[e], hi[e]),
                    "ci": _object_rows(ci[e], lo[e], hi[e]),
                    "act": _object_rows(act[e], lo[e], hi[e]),
                    "center": (side - lo[e]).astype(np.int32),
                    "sequence": sequence[e],
                    "position": position[e].astype(np.int32),
                    "stream_position": stream_position[e],
                    "doc": doc[e],
                    "doc_position": doc_position[e],
                    "batch": batch[e].astype(np.int32),
                    "sample_key": key[e],
                },
            )


COFIRING_MEMORY_LIMIT = "1GB"  # DuckDB's budget while it sums co-firing pairs; past it, it spills to disk
COFIRING_CHUNK_ROWS = 1 << 22  # co-firing pairs read from a shard and inserted at a time (64 MB of columns)


def _cofiring(con: duckdb.DuckDBPyConnection, merged: MergedHarvest) -> None:
    """Sum every shard's co-firing pairs in DuckDB and keep those reaching cofiring_min_count, in both orders.

    The shards' pairs are read COFIRING_CHUNK_ROWS at a time straight from each shard's three co-firing members
    (spd.harvest.shard.cofiring_chunks), staged in a temp table and aggregated by DuckDB, both under
    COFIRING_MEMORY_LIMIT, spilling to the store's temp directory: the merge's memory grows neither with the number
    of distinct pairs, which at C = 40K can reach billions, nor with one shard's pair count. A shard may list a pair
    more than once (its task's table spilled at its cap): GROUP BY sums those like the pairs of different shards."""
    min_count = int(merged.meta["settings"].get("cofiring_min_count", 1))
    con.execute("CREATE TEMP TABLE cofiring_parts (a INTEGER NOT NULL, b INTEGER NOT NULL, n BIGINT NOT NULL)")
    con.execute(f"SET memory_limit = '{COFIRING_MEMORY_LIMIT}'")
    con.execute("SET preserve_insertion_order = false")  # lets the ordered insert spill instead of buffering
    try:
        for path in merged.cofire_shards:
            for a, b, n in cofiring_chunks(path, COFIRING_CHUNK_ROWS):
                insert_columns(con, "cofiring_parts", {"a": a, "b": b, "n": n})
        con.execute(
            """
            INSERT INTO cofiring (component, other, count)
            WITH kept AS (SELECT a, b, sum(n)::BIGINT AS n FROM cofiring_parts GROUP BY a, b HAVING sum(n) >= ?)
            SELECT component, other, n FROM (
                SELECT a AS component, b AS other, n FROM kept UNION ALL SELECT b, a, n FROM kept
            ) ORDER BY component, other
            """,
            [min_count],
        )
    finally:
        con.execute("RESET memory_limit")
        con.execute("RESET preserve_insertion_order")
        con.execute("DROP TABLE cofiring_parts")


def _tasks_and_provenance(
    con: duckdb.DuckDBPyConnection, merged: MergedHarvest, merge_started: float, merged_at: str
) -> None:
    tasks = sorted(merged.tasks, key=lambda t: t["task"])
    task_rows = (
        {
            "task": t["task"],
            "n_batches": t["n_batches"],
            "n_sequences": t["n_sequences"],
            "n_tokens": t["n_tokens"],
            "batch_start": t["slice"]["batch_start"],
            "batch_step": t["slice"]["batch_step"],
            "slice_sha256": t["slice"]["sha256"],
            "task_seed": t["task_seed"],
            "device": t["device"],
            "cofiring_method": t.get("cofiring_method"),
            "kernels": t.get("kernels"),
            "host": t["runtime"].get("host"),
            "started_at": t["started_at"],
            "finished_at": t["finished_at"],
            "seconds": t["seconds"],
            "tokens_per_s": t["tokens_per_s"] or None,
            "shard_file": t["shard_file"],
            "shard_bytes": t["shard_bytes"],
        }
        for t in tasks
    )
    insert_rows(con, "tasks", TABLES["tasks"], task_rows)
    meta, spec, settings = merged.meta, merged.data, merged.meta["settings"]
    row = {
        "format": STORE_FORMAT,
        "format_version": STORE_FORMAT_VERSION,
        "n_tokens": merged.n_tokens,
        "n_batches": merged.n_batches,
        "n_sequences": merged.n_sequences,
        "n_tasks": int(meta["n_tasks"]),
        "n_components": merged.C,
        "vocab_size": merged.V,
        "seed": int(meta["seed"]),
        "ci_threshold": float(settings["ci_threshold"]),
        "split": spec["split"],
        "seq_len": int(spec["seq_len"]),
        "batch_size": int(spec["batch_size"]),
        "dataset_seed": int(spec["dataset_seed"]),
        "decomposition": json.dumps(meta["decomposition"], sort_keys=True),
        "settings": json.dumps(settings, sort_keys=True),
        "code": json.dumps(code_version(), sort_keys=True),
        "runtime": json.dumps(runtime(), sort_keys=True),
        "first_task_started_at": min(t["started_at"] for t in tasks),
        "last_task_finished_at": max(t["finished_at"] for t in tasks),
        "merged_at": merged_at,
        "merge_seconds": round(time.monotonic() - merge_started, 3),
    }
    insert_rows(con, "provenance", TABLES["provenance"], [row])


def _threads() -> int:
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, min(4, os.cpu_count() or 1))


def remove_stale_store_temps(out_dir: Path) -> None:
    """Delete what an earlier, killed merge left: the temp store, its WAL, DuckDB's spill directory."""
    for p in Path(out_dir).glob(f".{STORE_FILE}.*.tmp*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def build_store(out_dir: Path, merged: MergedHarvest, decomposition_dir: Path, merge_started: float, log=print) -> Path:
    """Build out_dir/harvest.duckdb from merged totals; returns its path."""
    out_dir = Path(out_dir)
    final = out_dir / STORE_FILE
    remove_stale_store_temps(out_dir)
    spill = out_dir / f".{STORE_FILE}.{os.getpid()}.tmp-spill"
    corpus = decomposition_corpus(decomposition_dir, merged.meta["settings"].get("dataset"))
    tokenizer = Tokenizer.from_file(str(decomposition_tokenizer_path(decomposition_dir)))
    with atomic_duckdb(final, temps=[spill], what="harvest store", disk_full_remedy=DISK_FULL_REMEDY) as con:
        steps = (
            lambda: [create_table(con, table, columns) for table, columns in TABLES.items()],
            lambda: _layers_and_components(con, merged),
            lambda: _vocab(con, merged, tokenizer),
            lambda: _token_stats(con, merged),
            lambda: _examples(con, merged, corpus),
            lambda: _cofiring(con, merged),
            lambda: _tasks_and_provenance(con, merged, merge_started, now_iso()),
        )
        con.execute(f"SET threads = {_threads()}")
        spill_sql = str(spill).replace("'", "''")
        con.execute(f"SET temp_directory = '{spill_sql}'")  # spill files (if any) beside the store, removed after
        for done, step in enumerate(steps, start=1):
            step()
            store_build_fault_point(done)
    log(f"wrote {final} ({final.stat().st_size / 1e6:.1f} MB)")
    return final
