"""The labels store (autointerp's out/labels.duckdb): one row per labelled component, read by the scorers.

Written once, by the autointerp stage's single writer (`write_labels_store`: temp file, checkpoint, close,
rename; no WAL left), and only read afterwards (`LabelsStore.open`, DuckDB `read_only=True`).

Components carry the harvest store's identity: `component` is the flat index and `key` the
'<layer>:<index>' key, so `HarvestStore.examples(record.key)` finds the same component. A failed label is
a row with `label = NULL` and its error, never a made-up label.

Each row lists the harvest examples its label was written from, so a scorer (detection, fuzzing) can hold
them out: `example_ids` names them as '<kind>:<rank>' (the harvest store's `examples(kind=...)` rank) and
`example_positions` holds the stream position of each one's firing token. A component fires at most once
per token position, so the position identifies a firing whichever list (uniform or top) it came from:
`record.is_held_out(example)` is the check to use.

    with LabelsStore.open(run_dir / "stages/autointerp/out") as labels:
        for record in labels.labels():
            if record.label is None:
                continue  # failed: record.error says why
            fresh = [e for e in harvest.examples(record.key) if not record.is_held_out(e)]
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb

from spd.duckdb_store import ReadOnlyStore, atomic_duckdb, create_table, insert_rows, store_file
from spd.interp.call import LLM_CALL_FIELDS, LLMCallMeta, call_column

LABELS_FILE = "labels.duckdb"
LABELS_FORMAT = "spd-labels-store"
LABELS_FORMAT_VERSION = 1


class _HasStreamPosition(Protocol):
    stream_position: int


@dataclass(frozen=True)
class LabelRecord(LLMCallMeta):
    """One component's label (or the reason it has none) and how it was obtained: the LLM call's metadata
    (keyword-only; provider and model required by the store, `error` says why there is no label, None when
    there is one; the session is kept in `extra`, the store has no column for it)."""

    component: int
    """Flat component index, as in the harvest store."""
    key: str
    """'<layer>:<index>', as in the harvest store."""
    layer: str
    label: str | None
    """None when labelling failed (see `error`)."""
    confidence: str | None
    """'low' | 'medium' | 'high' as the labeller stated it; None on failure."""
    reasoning: str | None
    example_ids: tuple[str, ...] = ()
    """The harvest examples shown to the labeller, as '<kind>:<rank>' ('uniform:3', 'top:0')."""
    example_positions: tuple[int, ...] = ()
    """Stream positions of the firing token of each shown example (same order as example_ids)."""
    strategy: str | None = None
    firing_density: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else the writer wants kept (stored as JSON)."""

    @property
    def ok(self) -> bool:
        return self.label is not None

    def held_out_positions(self) -> frozenset[int]:
        return frozenset(self.example_positions)

    def is_held_out(self, example: _HasStreamPosition) -> bool:
        """True when `example` (a harvest ActivationExample) is a firing the label was written from."""
        return example.stream_position in self.example_positions


_COLUMNS: dict[str, str] = dict(
    [
        ("component", "INTEGER NOT NULL"),
        ("key", "VARCHAR PRIMARY KEY"),
        ("layer", "VARCHAR NOT NULL"),
        ("label", "VARCHAR"),
        ("confidence", "VARCHAR"),
        ("reasoning", "VARCHAR"),
        call_column("provider", not_null=True),
        call_column("model", not_null=True),
        call_column("error"),
        ("example_ids", "VARCHAR[] NOT NULL"),
        ("example_positions", "BIGINT[] NOT NULL"),
        call_column("error_kind"),
        ("strategy", "VARCHAR"),
        ("firing_density", "DOUBLE"),
        *(
            call_column(name)
            for name in LLM_CALL_FIELDS
            if name not in ("provider", "model", "error", "error_kind", "session")
        ),
        ("extra_json", "VARCHAR NOT NULL"),
    ]
)
"""The labels table, in column order."""
_NAMES = tuple(_COLUMNS)
_META_COLUMNS = {
    "format": "VARCHAR NOT NULL",
    "format_version": "INTEGER NOT NULL",
    "n_labels": "INTEGER NOT NULL",
    "n_failed": "INTEGER NOT NULL",
    "meta_json": "VARCHAR NOT NULL",
}


def _check_record(record: LabelRecord) -> None:
    if (record.label is None) == (record.error is None):
        raise ValueError(
            f"component {record.key!r}: a row has either a label or an error, not both or neither "
            f"(label={record.label!r}, error={record.error!r})"
        )
    if len(record.example_ids) != len(record.example_positions):
        raise ValueError(f"component {record.key!r}: example_ids and example_positions differ in length")


def _row(record: LabelRecord) -> dict[str, Any]:
    extra_json = json.dumps(record.extra, ensure_ascii=False, sort_keys=True, default=str)
    return {**{name: getattr(record, name) for name in _COLUMNS if name != "extra_json"}, "extra_json": extra_json}


def write_labels_store(path: str | Path, records: Iterable[LabelRecord], meta: dict[str, Any] | None = None) -> int:
    """Build a labels store at `path` from `records`, atomically; returns the number of rows.

    The file is written under a temp name in the same directory, checkpointed and closed, then renamed
    (spd.duckdb_store): it is complete under its final name or absent, and no .wal is left. Rows are sorted
    by component.
    `meta` (JSON-able: strategy, LLM settings, counts) is kept in the one-row `meta` table.
    Raises ValueError for a row with both or neither of label and error, or a repeated key.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LABELS_FILE
    rows = sorted(records, key=lambda r: (r.component, r.key))
    for record in rows:
        _check_record(record)
    keys = [r.key for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError("repeated component keys in labels")
    with atomic_duckdb(path) as con:
        create_table(con, "labels", _COLUMNS)
        insert_rows(con, "labels", _COLUMNS, map(_row, rows))
        create_table(con, "meta", _META_COLUMNS)
        n_failed = sum(1 for r in rows if r.label is None)
        meta_row = {
            "format": LABELS_FORMAT,
            "format_version": LABELS_FORMAT_VERSION,
            "n_labels": len(rows) - n_failed,
            "n_failed": n_failed,
            "meta_json": json.dumps(meta or {}, sort_keys=True, default=str),
        }
        insert_rows(con, "meta", _META_COLUMNS, [meta_row])
    return len(rows)


class LabelsStore(ReadOnlyStore):
    """A labels store opened read-only; records are loaded once (a few thousand small rows)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        super().__init__(con, path)
        self._records: list[LabelRecord] | None = None
        self._by_key: dict[str, LabelRecord] = {}
        self._by_index: dict[int, LabelRecord] = {}

    @classmethod
    def open(cls, path: str | Path) -> LabelsStore:
        """Open a labels.duckdb, or the one inside an autointerp out/ (or stage) directory."""
        return cls.open_read_only(store_file(path, LABELS_FILE, "autointerp"))

    def _load(self) -> list[LabelRecord]:
        if self._records is None:
            cur = self._con.execute(f"SELECT {', '.join(_NAMES)} FROM labels ORDER BY component, key")
            records = []
            for row in cur.fetchall():
                values = dict(zip(_NAMES, row, strict=True))
                values["extra"] = json.loads(values.pop("extra_json"))
                values["example_ids"] = tuple(values["example_ids"])
                values["example_positions"] = tuple(values["example_positions"])
                records.append(LabelRecord(**values))
            self._records = records
            self._by_key = {r.key: r for r in records}
            self._by_index = {r.component: r for r in records}
        return self._records

    def labels(self, include_failed: bool = True) -> list[LabelRecord]:
        """Every row in component order; `include_failed=False` keeps only rows with a label."""
        records = self._load()
        return list(records) if include_failed else [r for r in records if r.label is not None]

    def get(self, component: int | str) -> LabelRecord | None:
        """The row of a component given as flat index or 'layer:index' key; None when it was not labelled."""
        self._load()
        if isinstance(component, int):
            return self._by_index.get(component)
        return self._by_key.get(component)

    def meta(self) -> dict[str, Any]:
        """The meta row: format, counts and the writer's `meta` (decoded)."""
        cur = self._con.execute("SELECT format, format_version, n_labels, n_failed, meta_json FROM meta")
        row = cur.fetchone()
        if row is None:
            return {}
        return {
            "format": row[0],
            "format_version": row[1],
            "n_labels": row[2],
            "n_failed": row[3],
            **json.loads(row[4]),
        }

    def __len__(self) -> int:
        return len(self._load())
