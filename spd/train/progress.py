"""How far a training run is, read from its metrics.jsonl as it is written (no torch): for progress displays."""

from __future__ import annotations

import json
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
TAIL_BYTES = 65536  # one record is a few hundred bytes; the tail always holds the last complete one


def last_logged_step(out_dir: Path) -> int | None:
    """The `step` of the last complete record in out_dir/metrics.jsonl, None before the first one."""
    path = Path(out_dir) / METRICS_FILE
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue  # a line being written, or cut by the tail's start
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            return record["step"]
    return None
