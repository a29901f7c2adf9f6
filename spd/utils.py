"""Small shared helpers for spd/: atomic file writes, fsync, the file hash and seeding (no orchestrator imports).

torch is imported inside the helpers that use it: the atomic writers are shared with torch-free code (stores,
shard checksums, the LLM stages) that must import without torch on a login node.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _read_umask() -> int:
    """The process umask. Reading it means setting it and setting it back, which is process-wide and races with
    other threads creating files, so it is done once, at import, never per write."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


# 0o666 minus the umask: what a plain open() would give (mkstemp's 0o600 would hide outputs from colleagues).
FILE_MODE = 0o666 & ~_read_umask()


HASH_CHUNK = 1 << 20


# What a file system that cannot fsync a directory answers (some FUSE, SMB and overlay mounts): the rename is done
# and the file complete, so a directory's fsync failing this way is skipped; an I/O error or a full disk is not.
_NO_DIRECTORY_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES, errno.EISDIR, errno.EBADF}


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes a rename in it durable; where the file system cannot
    fsync directories, that is skipped)."""
    is_dir = Path(path).is_dir()
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        if not (is_dir and e.errno in _NO_DIRECTORY_FSYNC):
            raise


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temp file in the same directory, fsync it, os.replace it onto `path`, fsync the directory.

    Readers on shared file systems see either the old file or the whole new one, never a torn write, and a
    killed job leaves only a dot-prefixed temp file (`.<name>.<random>.tmp`), never a partial file under the
    final name. The directory's fsync makes the rename itself survive a crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, FILE_MODE)
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Atomic write of `data` to `path`."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (sorted keys, so equal objects give byte-identical files)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """torch.save through atomic_write (a killed job never leaves a half checkpoint)."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read in HASH_CHUNK pieces (memory stays flat whatever its size)."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
            size += n
    return size, digest.hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 hex of a file, streamed (the one file hash of spd/: data manifests, provenance, shard records)."""
    return file_digest(path)[1]


def set_seed(seed: int) -> None:
    """Seed every RNG we use (python, torch CPU and CUDA) so runs are reproducible from one integer."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; anything else is passed to torch.device."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine")
    return torch.device(device)


def cache_root() -> Path:
    """Where caches shared by runs live (token caches, downloaded wandb runs): $SPD_PIPELINE_CACHE, default
    ~/.cache/spd-pipeline (on a cluster, a home directory every node mounts)."""
    return Path(os.environ.get("SPD_PIPELINE_CACHE", Path.home() / ".cache" / "spd-pipeline")).expanduser()
