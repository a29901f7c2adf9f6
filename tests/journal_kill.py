"""Kill a child process mid-run once its LLM results journal holds some rows (for the resume tests).

The resume tests run a stage-style LLM call in a child (`python -m tests.<module> ...`: the module's
`__main__` block), wait until its journal parts hold `n_saved` complete lines, SIGKILL it, and then rerun
in the test process to check that nothing saved is asked again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def saved_lines(journal_dir: Path) -> int:
    """Result rows in the journal's parts so far (not the reservation records written before each priced request)."""
    return sum(path.read_bytes().count(b'"status":') for path in Path(journal_dir).glob("part-*.jsonl"))


def sigkill_once_saved(module_args: list[str], journal_dir: Path, n_saved: int, timeout_s: float = 60.0) -> float:
    """Run `python -m *module_args` from the repo root; SIGKILL it once `journal_dir` holds `n_saved` rows, and
    return when it died (time.monotonic, as the loopback server's records).

    Fails if the child ends on its own first, saves too little within `timeout_s`, or does not die of the kill.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", *module_args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while saved_lines(journal_dir) < n_saved:
            assert child.poll() is None, f"child ended early: {child.stderr.read() if child.stderr else ''}"
            assert time.monotonic() < deadline, f"child saved nothing within {timeout_s:g} s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        killed_at = time.monotonic()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    return killed_at
