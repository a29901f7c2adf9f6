"""Atomic file writes: every file appears under its final name complete or not at all.

Writes go to a temp file in the same directory (same filesystem, so the rename is atomic,
also on NFS), are fsync'd, then renamed over the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pipeline.errors import UserError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write(2) on an O_APPEND descriptor.

    Lines from concurrent appenders never interleave; a crash loses at most the last line. A file whose
    last line was torn by such a crash (no final newline) gets the newline first, in the same write, so
    the torn line stays the only one lost instead of swallowing this record too. (Two appenders that
    both find the tear add an empty line, which readers skip.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> Any | None:
    """The parsed JSON at `path`, or None when it does not exist."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); was it edited by hand?") from e


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON-object lines of a JSONL file. A torn line (crash mid-write) is skipped, and so is any
    line that is not a JSON object or not UTF-8 (damage or a hand edit): readers act on records only."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return []
    records = []
    for line in data.splitlines():
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _chmod(path: Path, add: int = 0, remove: int = 0) -> None:
    """Add/remove mode bits of one entry; an entry gone since it was listed is skipped.

    Array tasks of a stage share its out/ directory: while one task walks it (make_writable at its start), a
    sibling may rename its temp file into place or delete one, so a listed name can vanish before its chmod.
    """
    with contextlib.suppress(FileNotFoundError):
        if not path.is_symlink():
            path.chmod((path.stat().st_mode | add) & ~remove)


def make_read_only(root: Path) -> None:
    """chmod a-w on a directory tree: outputs of a finished stage must not change."""
    root = Path(root)
    if not root.exists():
        return
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            _chmod(Path(dirpath) / name, remove=0o222)
    for dirpath, dirnames, _ in os.walk(root, topdown=False):
        for name in dirnames:
            _chmod(Path(dirpath) / name, remove=0o222)
    _chmod(root, remove=0o222)


def make_writable(root: Path) -> None:
    """Undo `make_read_only`: for a merge that writes out/ again, and for copies restored from a superseded stage."""
    root = Path(root)
    if not root.exists():
        return
    _chmod(root, add=0o200)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            _chmod(Path(dirpath) / name, add=0o200)
