"""Writing a whole directory atomically: build it under a temp name beside the target, then os.replace."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spd.utils import fsync_path


def write_file(path: Path, data: bytes) -> None:
    """Plain write + fsync (used inside a temp directory that is renamed into place as a whole)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def json_bytes(obj: Any) -> bytes:
    """Canonical JSON (sorted keys): equal objects give identical bytes."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in rows).encode()


def gzip_bytes(data: bytes) -> bytes:
    """gzip with a zero timestamp, so equal data give identical bytes (readable by gzip.open and DuckDB)."""
    return gzip.compress(data, compresslevel=6, mtime=0)


@contextlib.contextmanager
def atomic_directory(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp directory beside `out_dir`; on success it is renamed to `out_dir` in one step.

    Without `overwrite`, `out_dir` must not exist when the body finishes: if it does (another process got
    there first), FileExistsError is raised and our copy is discarded. With `overwrite`, an existing
    `out_dir` is first renamed aside and removed after the swap, so readers see the old or the new complete
    directory (or, for an instant, none). On any error the temp directory is removed: a half-written
    directory never appears under the final name.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the final directory gets ordinary permissions
    try:
        yield tmp
        old: Path | None = None
        if overwrite and out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, old / "d")
        try:
            os.replace(tmp, out_dir)
        except OSError as err:  # ENOTEMPTY / EEXIST: the target exists
            if old is not None:
                with contextlib.suppress(OSError):
                    os.replace(old / "d", out_dir)
            raise FileExistsError(f"{out_dir} already exists") from err
        fsync_path(out_dir.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
