"""DuckDB store files: written once, atomically, then only opened read-only; every store under spd/ does both here.

    with atomic_duckdb(out_dir / "scores.duckdb") as con:      # writing
        con.execute("CREATE TABLE ...")

    class ScoreStore(ReadOnlyStore): ...                       # reading
    with ScoreStore.open_read_only(path) as store: ...

Writing: the body fills a temp file beside the final path (`.<name>.<pid>.<random>.tmp`, same directory so the
rename is atomic, dot-prefixed so globs of outputs skip it). On success the store is CHECKPOINTed and
closed, the helper checks that DuckDB left no `.wal` (a reader opening the store read-only must not need
one), fsyncs the file, os.replace's it onto the final name and fsyncs the directory: the store appears
under its name complete and closed, or not at all. On any error (a kill aside) the temp file, its WAL and
the caller's `temps` are removed and the error re-raised; a SIGKILL leaves only dot-prefixed temp files,
which the caller's next attempt may glob away.

A full disk is the one failure worth rewording: DuckDB reports it as a commit or IO error deep in a
traceback. A caller that passes `disk_full_remedy` gets StoreDiskFullError instead, naming the store, the
(deleted) temp file, the free space left and what to do, with DuckDB's message kept at the end.

Finding: `store_file(path, names, stage)` is the one resolver of every store's `open`: a store file, or the
store inside a stage's out/ (or stage) directory; a missing one raises FileNotFoundError asking whether the
stage is done.

Declaring and filling a table: `create_table(con, name, columns)` from a column spec (name -> DuckDB type),
then `insert_rows` (Python rows, typed by the spec) or `insert_columns` (numpy / Arrow columns).

Reading: a store class subclasses ReadOnlyStore; `open_read_only` connects with DuckDB `read_only=True` (many jobs may
read one store at once; none may write it) and closes the connection again if the subclass's __init__
rejects the file; the store is a context manager.

duckdb is imported when a store is built or opened, not with this module: the LLM layer (spd.interp.results,
which uses spd.utils.fsync_path for its journal) imports neither duckdb nor torch until it writes its final store.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from spd.utils import fsync_path

if TYPE_CHECKING:
    import duckdb

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device", also the text of DuckDB's IO errors


class StoreDiskFullError(OSError):
    """The filesystem filled up while a store was written; nothing was published under the final name."""


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC from the OS, or a DuckDB error carrying its text (DuckDB wraps IO errors in its own types)."""
    import duckdb

    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return isinstance(error, duckdb.Error) and NO_SPACE in str(error)


def _remove(paths: Iterable[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _disk_full_error(final: Path, tmp: Path, what: str, remedy: str, error: BaseException) -> StoreDiskFullError:
    """Why the build failed in words: which store, which temp file, how much space there is without it."""
    free = shutil.disk_usage(final.parent).free  # after the temp files were deleted
    return StoreDiskFullError(
        errno.ENOSPC,
        f"{NO_SPACE}: the disk filled up while the {what} {final} was written (temp file {tmp.name}, "
        f"deleted; {free / 1e6:.1f} MB free there now). Nothing was published under {final.name} and {remedy}. "
        f"DuckDB said: {error}",
    )


@contextlib.contextmanager
def atomic_duckdb(
    path: str | Path,
    *,
    temps: Iterable[Path] = (),
    what: str = "store",
    disk_full_remedy: str | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Yield a connection to a temp DuckDB file that becomes `path` when the body succeeds (module docstring).

    `temps`: the caller's own scratch paths (files or directories, e.g. a spill directory or a staging file),
    removed on the way out whether the build succeeded or not. `what` names the store in the disk-full error;
    `disk_full_remedy` (e.g. "the shards are intact: free some space, then rerun the merge") turns a full
    disk into StoreDiskFullError; without it the original error is re-raised unchanged.
    """
    import duckdb

    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    wal = tmp.with_name(tmp.name + ".wal")
    extra = [Path(p) for p in temps]
    try:
        con = duckdb.connect(str(tmp))
        try:
            yield con
            con.execute("CHECKPOINT")
        finally:
            con.close()
        _remove(extra)
        if wal.exists():
            raise RuntimeError(f"DuckDB left {wal.name} after CHECKPOINT and close; refusing to publish {final.name}")
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent)
    except BaseException as e:
        _remove([tmp, wal, *extra])
        if disk_full_remedy is not None and is_disk_full(e):
            raise _disk_full_error(final, tmp, what, disk_full_remedy, e) from e
        raise


def store_file(path: str | Path, names: str | Sequence[str], stage: str) -> Path:
    """The store file `path` names: `path` itself, or the one of `names` inside the stage's out/ (or stage)
    directory `path`. Several `names` (e.g. the score kinds) are alternatives: exactly one must be present.

    Raises FileNotFoundError: no such file, none of `names` in the directory ("is the <stage> stage done?"),
    or more than one of them.
    """
    path = Path(path)
    if path.is_dir():
        names = [names] if isinstance(names, str) else list(names)
        found = []
        for name in names:
            hit = next((p for p in (path / name, path / "out" / name) if p.is_file()), None)
            if hit is not None:
                found.append(hit)
        if not found:
            raise FileNotFoundError(f"no {' or '.join(names)} in {path} or its out/ (is the {stage} stage done?)")
        if len(found) > 1:
            raise FileNotFoundError(f"expected one of {names} in {path} or its out/, found {[str(p) for p in found]}")
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"{stage} store {path} does not exist")
    return path


class ReadOnlyStore:
    """A store file opened read-only: one DuckDB connection (`_con`), closed by `close()` or the with-block."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        self._con = con
        self.path = path

    @classmethod
    def open_read_only(cls, path: Path) -> Self:
        """Connect to the store file at `path` read-only; never leaks the connection if __init__ rejects it."""
        import duckdb

        con = duckdb.connect(str(path), read_only=True)
        try:
            return cls(con, path)
        except BaseException:  # not this kind of store (or unreadable)
            con.close()
            raise

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Columns = Mapping[str, str]
"""A table's column spec: column name -> DuckDB type with its constraints ("VARCHAR NOT NULL", "BIGINT[]")."""

_ARROW_TYPES = {
    "VARCHAR": "string",
    "BOOLEAN": "bool_",
    "SMALLINT": "int16",
    "INTEGER": "int32",
    "BIGINT": "int64",
    "DOUBLE": "float64",
    "FLOAT": "float32",
    "JSON": "string",
}


def create_table(con: duckdb.DuckDBPyConnection, table: str, columns: Columns, constraints: str = "") -> None:
    """CREATE TABLE `table` from a column spec; `constraints` (e.g. "PRIMARY KEY (task, key)") follow the columns."""
    body = ", ".join([*(f'"{name}" {kind}' for name, kind in columns.items()), *([constraints] if constraints else [])])
    con.execute(f"CREATE TABLE {table} ({body})")


def _arrow_type(kind: str) -> Any:
    import pyarrow as pa

    base = kind.split()[0]
    if base.endswith("[]"):
        return pa.list_(_arrow_type(base.removesuffix("[]")))
    return getattr(pa, _ARROW_TYPES[base])()


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, columns: Columns, rows: Iterable[Mapping[str, Any]]) -> int:
    """INSERT rows (mappings with a value for each column of the spec) into `table`, typed by the spec: each
    column becomes an Arrow array of its DuckDB type (None -> NULL, sequences -> lists). Returns the count."""
    import pyarrow as pa

    values: dict[str, list[Any]] = {name: [] for name in columns}
    n = 0
    for row in rows:
        for name, column in values.items():
            value = row[name]
            column.append(list(value) if isinstance(value, tuple) else value)
        n += 1
    if n:
        arrow = pa.table({name: pa.array(values[name], type=_arrow_type(kind)) for name, kind in columns.items()})
        insert_columns(con, table, values, relation=arrow)
    return n


def insert_columns(
    con: duckdb.DuckDBPyConnection,
    table: str,
    columns: Mapping[str, Any],
    relation: object | None = None,
    order_by: str | None = None,
) -> None:
    """INSERT equal-length columns into `table` by column name. DuckDB scans them in place: a dict of numpy
    arrays (NaN / masked -> NULL) by default, or `relation` (e.g. an Arrow table of the same columns);
    `order_by` (SQL) sorts them on the way in."""
    con.register("_rows", columns if relation is None else relation)
    try:
        names = ", ".join(f'"{c}"' for c in columns)
        order = f" ORDER BY {order_by}" if order_by else ""
        con.execute(f'INSERT INTO {table} ({names}) SELECT {names} FROM "_rows"{order}')
    finally:
        con.unregister("_rows")
