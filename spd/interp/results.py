"""The results journal: every answer saved as it arrives, so a rerun never pays twice.

Layout: a directory of JSONL parts, `part-<utc time>-<pid>-<random>.jsonl`, one per session (a client run
in one process), each written by that session alone. A row is one line written with a single write(2) on
an O_APPEND descriptor and fsync'ed; a kill loses at most the rows not yet fsync'ed (milliseconds) and can
leave a torn last line, which readers skip. Writes go through one background thread that commits
everything queued since its last fsync together (group commit): an fsync costs ~3 ms here, so one per row
in the event loop would cap a run at a few hundred answers per second and stall every request in flight.

Rerun: keys with an answer (`status == "ok"`) in any part are never asked again; the spend recorded in the
parts counts against the budget. The final store is built from the journal (`final_rows`,
`write_rows_duckdb`) by the stage's single writer.

Spend of requests in flight: before a request is sent the client journals a reservation record (its worst
case, `{"reservation": id, "usd": ...}`), written with its own write(2) at once (not queued), so it is in the
file before the request leaves even if the process is killed a moment later. The row that settles the
request lists the ids (`reservations`). Spent = the rows' charges + the worst cases of reservations no row
settled (an aborted, cancelled or killed session's requests in flight may have been billed). Journals
written before reservation records existed read the same: they have no reservations to add.

Text: every string of a row is stored as UTF-8; code points UTF-8 cannot encode (lone surrogates, which a
JSON answer can smuggle in as `\\ud800`) are replaced by U+FFFD when the row is encoded, so one odd answer
can never stop the journal or lose the rows around it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from spd.duckdb_store import atomic_duckdb, create_table
from spd.interp.call import LLMCallMeta, call_column
from spd.utils import fsync_path

Status = Literal["ok", "failed", "skipped"]
PART_GLOB = "part-*.jsonl"

_UNENCODABLE = re.compile("[\ud800-\udfff]")
"""Surrogate code points: a Python str can hold them alone (json.loads of "\\ud800" makes one), UTF-8 cannot."""


def storable_text(text: str) -> str:
    """`text` with every code point UTF-8 cannot encode replaced by U+FFFD (a no-op for ordinary text).

    Provider answers pass through here before they are parsed or stored, so a lone surrogate in an answer
    becomes a visible replacement character instead of an exception when the row is written.
    """
    return _UNENCODABLE.sub("\ufffd", text)


def storable(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings, numbers) with `storable_text` applied to every string in it."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


@dataclass(frozen=True)
class ResultRow(LLMCallMeta):
    """One item's outcome and the LLM call's metadata (keyword-only; the journal always fills provider, model,
    latency_s, attempts, finished_at and session). A failure has `output=None` and its error; an answer is
    never invented."""

    key: str
    task: str
    status: Status
    output: dict[str, Any] | None
    charged_usd: float | None
    """What the budget counted: cost_usd plus the worst case of attempts whose usage is unknown (timeouts)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """The work item's `meta` (e.g. ids of the examples shown), for the stage's own columns."""
    reservations: tuple[str, ...] = ()
    """Ids of the journaled reservations (one per request sent) that this row settles; see the module doc."""

    def to_json_line(self) -> bytes:
        """One journal line. Never fails on text: unencodable code points become U+FFFD and values JSON cannot
        hold are written as their repr, so a row with odd content is saved rather than lost with its batch."""
        record = {name: getattr(self, name) for name in _FIELDS}
        try:
            return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        except (UnicodeEncodeError, TypeError, ValueError):
            text = json.dumps(storable(record), ensure_ascii=False, separators=(",", ":"), default=repr)
            return (text + "\n").encode("utf-8")

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ResultRow:
        """A journal line's row; KeyError for a line missing what every line carries (the reader skips it)."""
        missing = _WRITTEN_ALWAYS - record.keys()
        if missing:
            raise KeyError(f"journal line without {sorted(missing)}")
        values = {name: record.get(name) for name in _FIELDS if name in record}
        values["reservations"] = tuple(values.get("reservations") or ())
        return cls(**values)


_FIELDS = tuple(ResultRow.__dataclass_fields__)
# Fields every journal line has had (the call's metadata defaults to None for the type, never in a written line)
_WRITTEN_ALWAYS = frozenset(
    {"key", "task", "status", "provider", "model", "latency_s", "attempts", "finished_at", "session"}
)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class ReservationRecord:
    """A journal line saying that a request worth at most `usd` was about to be sent (see the module doc)."""

    id: str
    usd: float


def read_part_records(path: Path) -> Iterator[ResultRow | ReservationRecord]:
    """Complete rows and reservation records of one part, in file order; a torn last line is skipped."""
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
                if "reservation" in record:
                    yield ReservationRecord(str(record["reservation"]), float(record["usd"]))
                else:
                    yield ResultRow.from_dict(record)
            except (json.JSONDecodeError, TypeError, ValueError, KeyError, AttributeError, UnicodeDecodeError):
                continue


def read_part(path: Path) -> Iterator[ResultRow]:
    """Complete rows of one part (reservation records left out); a torn last line (killed mid-write) is skipped."""
    for record in read_part_records(path):
        if isinstance(record, ResultRow):
            yield record


def iter_rows(directory: Path, task: str | None = None) -> Iterator[ResultRow]:
    """Every row of every part, oldest session first, in the order written."""
    for path in sorted(Path(directory).glob(PART_GLOB)):
        for row in read_part(path):
            if task is None or row.task == task:
                yield row


def charged_usd(out_dir: Path | None) -> float | None:
    """Money the journals anywhere under `out_dir` record as charged so far (all parts, all sessions; the rows'
    charges, not reservations' worst cases); None when there is no journal. Read-only: for a report or a progress
    line while the stage may still be writing."""
    if out_dir is None or not Path(out_dir).is_dir():
        return None
    directories = sorted({p.parent for p in Path(out_dir).rglob(PART_GLOB)})
    if not directories:
        return None
    total = 0.0
    for directory in directories:
        for row in iter_rows(directory):
            charged = row.charged_usd if row.charged_usd is not None else row.cost_usd
            total += charged or 0.0
    return total


def final_rows(directory: Path, task: str) -> list[ResultRow]:
    """One row per key: its latest answer if it has one, else its latest failure or skip; sorted by key."""
    best: dict[str, ResultRow] = {}
    for row in iter_rows(directory, task):
        held = best.get(row.key)
        if held is None or row.status == "ok" or held.status != "ok":
            best[row.key] = row
    return [best[k] for k in sorted(best)]


class ResultJournal:
    """Append-only results of one stage; this session's part has this object as its only writer.

    Opening reads the existing parts into a small index (status and spend per key, not the prompts; the
    reservations no row has settled yet), so resume checks are in memory. Use as a context manager, or call
    `close()`: it waits until every row and reservation is on disk.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.session = f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}"
        self.part_path = self.directory / f"part-{self.session}.jsonl"
        self._status: dict[tuple[str, str], Status] = {}
        self._spent = 0.0
        self._unsettled: dict[str, float] = {}
        """Reservation id -> worst case, for reservations no row has settled (yet): counted as spent."""
        for path in sorted(self.directory.glob(PART_GLOB)):
            for record in read_part_records(path):
                if isinstance(record, ReservationRecord):
                    self._unsettled[record.id] = record.usd  # a part holds a reservation before its row
                else:
                    self._index(record)
        self._cv = threading.Condition()
        self._fd: int | None = None
        self._n_reserved = 0
        self._unsynced = False
        self._pending: list[bytes] = []
        self._enqueued = 0
        self._durable = 0
        self._closing = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _index(self, row: ResultRow) -> None:
        k = (row.task, row.key)
        if self._status.get(k) != "ok":
            self._status[k] = row.status
        charged = row.charged_usd if row.charged_usd is not None else row.cost_usd
        self._spent += charged or 0.0
        for reservation in row.reservations:  # the row's charge replaces its requests' worst cases
            self._unsettled.pop(reservation, None)

    # -- queries ---------------------------------------------------------------------------------------
    def completed_keys(self, task: str, *, include_failed: bool = False) -> set[str]:
        """Keys not to ask again: those with an answer, plus failed ones when `include_failed`."""
        wanted = {"ok", "failed"} if include_failed else {"ok"}
        return {key for (t, key), status in self._status.items() if t == task and status in wanted}

    def spent_usd(self) -> float:
        """Everything charged in this journal so far (all sessions, this one included), plus the worst case of
        every journaled request no row has settled: requests in flight, or lost to an abort or a kill."""
        return self._spent + sum(self._unsettled.values())

    # -- writing ---------------------------------------------------------------------------------------
    def reserve(self, usd: float) -> str:
        """Journal that a request costing at most `usd` is about to be sent; return the id its row settles.

        The record is written at once, with one write(2) on the part's O_APPEND descriptor, instead of being
        queued for the writer thread: when this returns it is in the file, so a SIGKILL, SIGTERM or crash an
        instant later cannot hide the request's spend from a rerun. The writer's next group commit fsyncs it.
        """
        with self._cv:
            self._check_writable()
            fd = self._open_part()
            self._n_reserved += 1
            reservation = f"{self.session}:{self._n_reserved}"
            line = json.dumps({"reservation": reservation, "usd": usd, "at": utc_now()}, separators=(",", ":"))
            _write_all(fd, (line + "\n").encode("utf-8"))
            self._unsettled[reservation] = usd
            self._unsynced = True
            self._start_writer()
            self._cv.notify_all()
        return reservation

    def append(self, row: ResultRow) -> None:
        """Queue a row for the writer thread; it is durable after the next group commit (see `flush`)."""
        line = row.to_json_line()
        with self._cv:
            self._check_writable()
            self._start_writer()
            self._pending.append(line)
            self._enqueued += 1
            self._cv.notify_all()
        self._index(row)

    def _check_writable(self) -> None:
        if self._error is not None:
            raise OSError(f"results journal {self.part_path} failed: {self._error}") from self._error
        if self._closing:
            raise RuntimeError(f"results journal {self.part_path} is closed")

    def _start_writer(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_loop, name="llm-journal", daemon=True)
            self._thread.start()

    def _open_part(self) -> int:
        """The part's descriptor, created on first use (under `_cv`), so a session that writes nothing leaves no file."""
        if self._fd is None:
            self._fd = os.open(self.part_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            fsync_path(self.directory)  # the new part's name survives a crash too
        return self._fd

    def flush(self) -> None:
        """Block until every row appended so far is fsync'ed (or raise the writer's error)."""
        with self._cv:
            target = self._enqueued
            while self._durable < target and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise OSError(f"results journal {self.part_path} failed: {self._error}") from self._error

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._cv:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        if self._error is not None:
            raise OSError(f"results journal {self.part_path} failed: {self._error}") from self._error

    def __enter__(self) -> ResultJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_loop(self) -> None:
        try:
            with self._cv:
                fd = self._open_part()
            while True:
                with self._cv:
                    while not self._pending and not self._unsynced and not self._closing:
                        self._cv.wait()
                    if not self._pending and not self._unsynced:
                        return
                    batch, self._pending = self._pending, []
                    self._unsynced = False
                    upto = self._enqueued
                _write_all(fd, b"".join(batch))
                os.fsync(fd)
                with self._cv:
                    self._durable = upto
                    self._cv.notify_all()
        except OSError as e:
            with self._cv:
                self._error = e
                self._cv.notify_all()


def _write_all(fd: int, data: bytes) -> None:
    """Write `data` to `fd` (O_APPEND), looping over short writes."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# -- the final store ---------------------------------------------------------------------------------------
RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("key", "VARCHAR NOT NULL"),
    ("task", "VARCHAR NOT NULL"),
    call_column("provider", not_null=True),
    call_column("model", not_null=True),
    ("status", "VARCHAR NOT NULL"),
    call_column("prompt"),
    call_column("raw_response"),
    ("output_json", "VARCHAR"),
    call_column("input_tokens"),
    call_column("output_tokens"),
    call_column("cost_usd"),
    ("charged_usd", "DOUBLE"),
    call_column("latency_s", not_null=True),
    call_column("attempts", not_null=True),
    call_column("error_kind"),
    call_column("error"),
    call_column("finished_at", not_null=True),
    call_column("session", not_null=True),
    ("extra_json", "VARCHAR NOT NULL"),
)


def row_record(row: ResultRow) -> dict[str, Any]:
    """A row as the values of RESULT_COLUMNS (output and extra as JSON text; output NULL for failures)."""
    record = {name: getattr(row, name) for name, _ in RESULT_COLUMNS if name not in ("output_json", "extra_json")}
    record["output_json"] = None if row.output is None else json.dumps(row.output, ensure_ascii=False, sort_keys=True)
    record["extra_json"] = json.dumps(row.extra or {}, ensure_ascii=False, sort_keys=True)
    return record


def write_rows_duckdb(rows: Iterable[ResultRow], path: Path, table: str = "llm_results") -> int:
    """Write rows into a new DuckDB file at `path`, atomically: temp file, checkpoint, close, rename.

    Returns the number of rows. The file appears complete under its name or not at all, with no WAL left.
    Rows go in through a temporary NDJSON file and DuckDB's `read_json` (row-by-row inserts from Python
    take minutes for ten thousand rows). The atomic steps are spd.duckdb_store's.
    """
    path = Path(path)
    staging = path.parent / f".{path.name}.{secrets.token_hex(4)}.ndjson"
    n_rows = 0
    with atomic_duckdb(path, temps=[staging]) as con:
        with open(staging, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row_record(row), ensure_ascii=False) + "\n")
                n_rows += 1
        create_table(con, table, dict(RESULT_COLUMNS), "PRIMARY KEY (task, key)")
        if n_rows:
            types = ", ".join(f"'{name}': '{kind.removesuffix(' NOT NULL')}'" for name, kind in RESULT_COLUMNS)
            con.execute(
                f"INSERT INTO {table} SELECT * FROM read_json(?, format = 'newline_delimited', columns = {{{types}}})",
                [str(staging)],
            )
    return n_rows
