"""spd.utils: atomic writes publish files with the permissions a plain open() would give, without touching the
process umask per write (setting it is process-wide and races with other threads creating files)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from spd import utils
from spd.utils import atomic_write_bytes, atomic_write_json


def test_atomic_writes_get_the_umask_mode_and_never_set_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    mode = 0o666 & ~umask
    assert mode == utils.FILE_MODE  # read once, at import

    def no_umask(mask: int) -> int:
        raise AssertionError(f"os.umask({mask:#o}) called during an atomic write")

    monkeypatch.setattr(os, "umask", no_umask)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_json(tmp_path / "b.json", {"k": 1})
    for name in ("a.bin", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
    assert (tmp_path / "a.bin").read_bytes() == b"x"
