"""Where a harvest came from: code version, library versions, inputs' digests and clock times.

spd/ may not import the orchestrator, so the code version is worked out here: the package version, a
sha256 over the spd/ sources that ran (stable across copies, e.g. a run's code snapshot), and the git
commit when the sources sit in a git checkout.
"""

from __future__ import annotations

import contextlib
import hashlib
import platform
import socket
import subprocess
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

SPD_ROOT = Path(__file__).resolve().parent.parent


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def spd_sources_sha256() -> str:
    """sha256 over the spd/ sources that run (their paths under spd/ and contents): the same for every copy."""
    digest = hashlib.sha256()
    for path in sorted(SPD_ROOT.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(SPD_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """Package version, sha256 of the spd/ sources, and the git commit if there is one."""
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", str(SPD_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        commit = out.stdout.strip() or None
    try:
        package = metadata.version("spd-pipeline")
    except metadata.PackageNotFoundError:
        package = None
    return {
        "package": package,
        "spd_sources_sha256": spd_sources_sha256(),
        "git_commit": commit,
        "spd_root": str(SPD_ROOT),
    }


def runtime() -> dict[str, Any]:
    """Host and library versions of the running process."""
    found: dict[str, Any] = {"host": socket.gethostname(), "python": platform.python_version()}
    for dist in ("torch", "numpy", "numba", "duckdb"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found
