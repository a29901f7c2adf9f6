"""`run.py serve RUN`: a local web app to ask a finished run's decomposition about one prompt.

    serve(run_dir, status, host, port, device, token)  -> blocks, serving until interrupted

Module map: prompt (the target's and the CI-masked model's predictions, CI per token), graph (the prompt's
attribution graph and its pruning), interventions (switching components off and on), panels (the report's
component panels, cached under RUN/serve/), session (what is loaded once), views (the JSON API's requests and
answers), app (FastAPI routes, the token check, the page), templates/ (the page). docs/serve.md describes the API.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spd.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ServedRun": "spd.serve.session",
        "open_served_run": "spd.serve.session",
        "create_app": "spd.serve.app",
        "check_bind": "spd.serve.app",
    },
)

SERVER_FILE = "server.json"  # RUN/serve/server.json while a server runs: where to reach it (never the token)


def serve(
    run_dir: Path,
    status: dict[str, Any],
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    token: str | None = None,
    log=print,
) -> None:
    """Load the run, then serve it with uvicorn until interrupted; RUN/serve/server.json says where meanwhile."""
    import uvicorn

    from spd.serve.app import check_bind, create_app
    from spd.serve.session import open_served_run
    from spd.utils import atomic_write_json

    check_bind(host, token)
    run = open_served_run(run_dir, status, device, log)
    app = create_app(run, token)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}/"
    server_file = run.serve_dir / SERVER_FILE
    atomic_write_json(
        server_file,
        {
            "url": url,
            "host": host,
            "port": port,
            "pid": os.getpid(),
            "device": device,
            "token_required": bool(token),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    log(f"serve: {url}" + ("?token=<your token>" if token else "") + "  (Ctrl-C stops it)")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        server_file.unlink(missing_ok=True)


__all__ = ["SERVER_FILE", "ServedRun", "check_bind", "create_app", "open_served_run", "serve"]
