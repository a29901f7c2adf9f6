"""Shard checksums: every array task records its shard's size and sha256; the merge verifies them before use.

Why: a shard is written once by its task and read by the merge later, maybe on another node, through a shared
file system. Atomic renames guarantee that no partial file appears under the final name, but not what happens to
the file afterwards: a truncated copy, a block flipped by a flaky disk or cache, a shard restored from another
run. Some corruptions even parse (a flipped byte in a stored .npz member or a memory-mapped tensor is just a
different number), so "it loads" is no check. The record is a small JSON file written atomically AFTER the shard:

    <shard dir>/checksums/<shard name>.json   {"format", "file", "bytes", "sha256"}

A task killed between the two renames has no task marker, so it runs again and rewrites both; the merge runs only
once every task has its marker, and then a shard without its record is as unusable as one whose bytes differ.

The merge hashes each file streaming (spd.utils.file_digest, 1 MiB at a time: memory stays flat whatever the shard size) and checks the
size first, so a truncated file is refused without reading it. The cost is one extra sequential read per shard.

Failure contract: `ShardsUnusable.invalid_tasks` names the array tasks whose outputs must be redone. The
orchestrator's stage contract (stages/base.py) honours that attribute on any error a merge raises: it removes those
tasks' markers, so `rerun --stage <stage>` redoes exactly those tasks and the merge. Code under spd/ never depends
on stages/, hence the attribute rather than a shared base class.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from spd.utils import atomic_write_json, file_digest

T = TypeVar("T")

CHECKSUM_FORMAT = "spd-shard-checksum/1"
CHECKSUM_DIR = "checksums"  # beside the shards, so globs of shard-* see shards only


class ShardsUnusable(Exception):
    """Some array tasks' shards cannot be used; `invalid_tasks` are the tasks to redo (see the module docstring)."""

    def __init__(self, message: str, invalid_tasks: Iterable[int]) -> None:
        super().__init__(message)
        self.invalid_tasks: tuple[int, ...] = tuple(sorted({int(t) for t in invalid_tasks}))

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions travel pickled (submitit); the default reduce would call __init__ with the message only.
        return (type(self), (str(self), self.invalid_tasks))


class ShardsMissing(ShardsUnusable, FileNotFoundError):
    """Shards of tasks that should have written one are absent."""


class ShardsCorrupt(ShardsUnusable, ValueError):
    """Shards are truncated, altered, unreadable or lack their checksum record."""


def checksum_path(shard: Path) -> Path:
    """Where the checksum record of `shard` lives."""
    shard = Path(shard)
    return shard.parent / CHECKSUM_DIR / f"{shard.name}.json"


def write_checksum(shard: Path) -> dict[str, Any]:
    """Hash the (complete, renamed) shard and write its record atomically. Call it after the shard's rename."""
    shard = Path(shard)
    record_path = checksum_path(shard)
    for stale in record_path.parent.glob(f".{record_path.name}.*.tmp"):  # left by a killed earlier attempt
        stale.unlink(missing_ok=True)
    size, sha256 = file_digest(shard)
    record = {"format": CHECKSUM_FORMAT, "file": shard.name, "bytes": size, "sha256": sha256}
    atomic_write_json(record_path, record)
    return record


def shard_problem(shard: Path) -> str | None:
    """Why `shard` cannot be trusted (no record, missing, other size, other sha256), or None when it matches."""
    shard = Path(shard)
    record_path = checksum_path(shard)
    try:
        record = json.loads(record_path.read_text())
        expected_size, expected_sha = int(record["bytes"]), str(record["sha256"])
        if record.get("file") != shard.name:
            return f"its checksum record {record_path.name} describes {record.get('file')!r}"
    except FileNotFoundError:
        return f"no checksum record ({CHECKSUM_DIR}/{record_path.name}), so it cannot be verified"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its checksum record {CHECKSUM_DIR}/{record_path.name} is unreadable ({type(e).__name__}: {e})"
    try:
        size = shard.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != expected_size:
        kind = "truncated" if size < expected_size else "longer than written"
        return f"{kind}: {size} bytes, its task wrote {expected_size}"
    _, sha256 = file_digest(shard)
    if sha256 != expected_sha:
        return f"corrupted: sha256 {sha256[:16]}... differs from the {expected_sha[:16]}... its task wrote"
    return None


def verify_shards(shards: Mapping[int, Path], what: str) -> None:
    """Check every shard (task -> path) against its record; raise one ShardsCorrupt naming every bad file."""
    problems = {task: problem for task, path in shards.items() if (problem := shard_problem(path)) is not None}
    if problems:
        folder = Path(next(iter(shards.values()))).parent
        details = "; ".join(f"{Path(shards[t]).name} (task {t}) {p}" for t, p in sorted(problems.items()))
        raise ShardsCorrupt(
            f"{what}: {len(problems)} of {len(shards)} shard(s) in {folder} failed verification: {details}",
            problems,
        )


def unreadable_shard(what: str, task: int, shard: Path, error: BaseException) -> ShardsCorrupt:
    """The error for a shard that matches its checksum but does not parse (its task wrote a bad file)."""
    return ShardsCorrupt(
        f"{what}: {Path(shard).name} (task {task}) in {Path(shard).parent} is unreadable: {type(error).__name__}: "
        f"{error}",
        [task],
    )


# --- what every merge checks before it combines its tasks' shards ----------------------------------------------


def require_shards(
    paths: Sequence[Path], what: str, hint: str = "", missing: type[ShardsMissing] = ShardsMissing
) -> None:
    """Every task's shard (task i -> paths[i]) present, else `missing` naming each absent file and its task, then
    every one matching its checksum record (verify_shards): all refused before any shard is loaded."""
    absent = [(task, Path(p)) for task, p in enumerate(paths) if not Path(p).is_file()]
    if absent:
        names = ", ".join(f"{p.name} (task {task})" for task, p in absent)
        raise missing(
            f"{what}: {len(absent)} of {len(paths)} shard(s) missing in {Path(paths[0]).parent}: {names}{hint}",
            [task for task, _ in absent],
        )
    verify_shards(dict(enumerate(paths)), what)


def load_task_shard(
    path: Path, task: int, n_tasks: int, what: str, load: Callable[[Path], T], recorded: Callable[[T], tuple[Any, Any]]
) -> T:
    """`load` a verified shard; one that does not parse, or records (task, n_tasks) other than this task's, is that
    task's bad output (ShardsCorrupt naming it)."""
    try:
        shard = load(path)
    except MemoryError:
        raise
    except Exception as e:
        raise unreadable_shard(what, task, path, e) from e
    got_task, got_n = recorded(shard)
    if (got_task, got_n) != (task, n_tasks):
        raise ShardsCorrupt(
            f"{what}: {Path(path).name} holds task {got_task} of {got_n}, expected task {task} of {n_tasks}", [task]
        )
    return shard


def check_consistent(
    what: str,
    path: Path,
    first: Mapping[str, Any],
    other: Mapping[str, Any],
    fields: Iterable[str],
    comparable: Callable[[str, Any], Any] = lambda _, value: value,
) -> None:
    """ValueError when the shard at `path` disagrees with the first shard on one of `fields` (compared through
    `comparable`): shards of different runs must never be combined."""
    for field in fields:
        mine, theirs = comparable(field, other.get(field)), comparable(field, first.get(field))
        if mine != theirs:
            raise ValueError(
                f"{what}: {Path(path).name} disagrees with the first shard on {field!r}: "
                f"{_short(other.get(field))} vs {_short(first.get(field))} (shards of different runs?)"
            )


def _short(value: Any, limit: int = 200) -> str:
    """A value's repr cut to `limit` characters: a layout's alive masks would make a message of megabytes."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
