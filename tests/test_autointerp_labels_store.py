"""The labels store (spd/interp/labels_store.py): written atomically, read read-only, records round-trip."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest

from spd.harvest.schema import ActivationExample
from spd.interp.labels_store import LABELS_FILE, LabelRecord, LabelsStore, write_labels_store


def _records() -> list[LabelRecord]:
    return [
        LabelRecord(
            component=7,
            key="layers.0.mlp.up_proj:7",
            layer="layers.0.mlp.up_proj",
            label='"ten" / "six"',
            confidence="high",
            reasoning="count words",
            provider="openai",
            model="gpt-4o-mini",
            error=None,
            example_ids=("uniform:0", "top:2"),
            example_positions=(130, 4242),
            strategy="compact_skeptical",
            firing_density=0.01,
            prompt="Label one component ...",
            raw_response='{"label": "..."}',
            input_tokens=900,
            output_tokens=40,
            cost_usd=0.0002,
            latency_s=1.5,
            attempts=2,
            extra={"status": "ok"},
        ),
        LabelRecord(
            component=3,
            key="layers.0.mlp.up_proj:3",
            layer="layers.0.mlp.up_proj",
            label=None,
            confidence=None,
            reasoning=None,
            provider="openai",
            model="gpt-4o-mini",
            error="fails the LabelOutput schema",
            error_kind="invalid_schema",
            attempts=7,
        ),
    ]


def test_records_round_trip_in_component_order_and_get_by_key_or_index(tmp_path: Path) -> None:
    records = _records()
    assert write_labels_store(tmp_path / LABELS_FILE, records, meta={"strategy": "compact_skeptical"}) == 2
    with LabelsStore.open(tmp_path) as store:  # a directory finds labels.duckdb inside
        assert [r.component for r in store.labels()] == [3, 7]
        assert store.get("layers.0.mlp.up_proj:7") == records[0]
        assert store.get(3) == records[1]
        assert store.get("layers.0.mlp.up_proj:99") is None and store.get(99) is None
        assert [r.key for r in store.labels(include_failed=False)] == ["layers.0.mlp.up_proj:7"]
        meta = store.meta()
        assert (meta["n_labels"], meta["n_failed"], meta["strategy"]) == (1, 1, "compact_skeptical")
        assert len(store) == 2


def test_failed_label_is_null_with_its_error(tmp_path: Path) -> None:
    write_labels_store(tmp_path / LABELS_FILE, _records())
    with duckdb.connect(str(tmp_path / LABELS_FILE), read_only=True) as con:
        row = con.execute("SELECT label, confidence, error, error_kind FROM labels WHERE component = 3").fetchone()
    assert row == (None, None, "fails the LabelOutput schema", "invalid_schema")


def test_held_out_examples_are_recognised_by_stream_position(tmp_path: Path) -> None:
    record = _records()[0]

    def example(position: int) -> ActivationExample:
        return ActivationExample(7, "uniform", 5, [1, 2], [0.5, 0.5], [1.0, 1.0], 0, 0, 0, position, None, None, 0)

    assert record.is_held_out(example(4242)) and record.is_held_out(example(130))
    assert not record.is_held_out(example(131))
    assert record.held_out_positions() == frozenset({130, 4242})


def test_store_is_written_atomically_closed_and_opened_read_only(tmp_path: Path) -> None:
    path = tmp_path / LABELS_FILE
    write_labels_store(path, _records())
    assert sorted(os.listdir(tmp_path)) == [LABELS_FILE]  # no temp file, no .wal
    with LabelsStore.open(path), LabelsStore.open(path):  # two readers at once: read_only connections
        pass
    with LabelsStore.open(path) as store, pytest.raises(duckdb.Error):
        store._con.execute("DELETE FROM labels")
    write_labels_store(path, _records()[:1])  # a rebuild replaces the file whole
    with LabelsStore.open(path) as store:
        assert [r.component for r in store.labels()] == [7]


def test_invalid_rows_are_refused_and_leave_no_file(tmp_path: Path) -> None:
    who = {"provider": "heuristic", "model": "token-match-v1"}
    both = LabelRecord(1, "a:1", "a", "x", "low", "r", **who, error="boom")
    neither = LabelRecord(1, "a:1", "a", None, None, None, **who, error=None)
    ragged = LabelRecord(1, "a:1", "a", "x", "low", "r", ("uniform:0",), (), **who)
    ok = LabelRecord(1, "a:1", "a", "x", "low", "r", **who)
    for bad in ([both], [neither], [ragged], [ok, ok]):
        with pytest.raises(ValueError):
            write_labels_store(tmp_path / LABELS_FILE, bad)
    assert os.listdir(tmp_path) == []


def test_an_empty_store_is_valid_and_a_missing_one_is_a_clear_error(tmp_path: Path) -> None:
    write_labels_store(tmp_path / LABELS_FILE, [])
    with LabelsStore.open(tmp_path) as store:
        assert store.labels() == [] and store.meta()["n_labels"] == 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is the autointerp stage done"):
        LabelsStore.open(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LabelsStore.open(tmp_path / "elsewhere.duckdb")
