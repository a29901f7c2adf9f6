"""The `serve` command, as the CLI reaches it: a thin wrapper over `spd.serve`.

Not a stage of the DAG: the app reads a finished run's decomposition and stores on a login or interactive
node, writes only under RUN/serve/, and blocks until interrupted. The CLI reaches this module through the
registry (pipeline.registry.tool) only when the command runs, and passes the run record it computed (as for
`report`), so neither pipeline/ learns about SPD nor spd/ about the orchestrator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def check_bind(host: str, token: str | None) -> None:
    """ValueError for a bind beyond this machine without a token (before anything is loaded)."""
    from spd.serve.app import check_bind as check

    check(host, token)


def serve_run(run_dir: Path, status_json: dict[str, Any], host: str, port: int, device: str, token: str | None) -> None:
    """Serve the run at `run_dir` until interrupted; ValueError when it has nothing to serve."""
    from spd.serve import serve  # heavy imports (torch, fastapi, duckdb) only when asked

    serve(Path(run_dir), status_json, host=host, port=port, device=device, token=token)
