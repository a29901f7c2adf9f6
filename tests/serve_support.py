"""A small finished run for the `serve` tests (decompose of a 2-layer tiny LM, harvest, heuristic labels), and a
uvicorn server on a free loopback port in a background thread for the browser test. No test lives here."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testkit.lm_fixtures import SMALL_HARVEST, tiny_lm_decompose_config
from tests.conftest import run_local_pipeline

HARVEST = {**SMALL_HARVEST, "n_tasks": 1}
AUTOINTERP = {
    "llm": {"provider": "heuristic"},
    "min_density": 0.0,
    "model_description": "a 2-layer tiny LM",
    "dataset_description": "synthetic stories",
}


def make_serve_run(work: Path) -> tuple[Path, dict[str, Any]]:
    """`python run.py` on decompose (2 layers) + harvest + autointerp; the run directory and `status --json`."""
    decompose = tiny_lm_decompose_config(n_layers=2).model_dump(mode="json")
    return run_local_pipeline(work, "srv", {"decompose": decompose, "harvest": HARVEST, "autointerp": AUTOINTERP})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in a daemon thread; yields its base URL, stops it on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
