"""`run.py serve RUN`: a local web app to ask a finished run's decomposition about one prompt.

    serve(run_dir, status, host, port, device, token)  -> blocks, serving until interrupted

Module map: prompt (the target's and the CI-masked model's predictions, CI per token), graph (the prompt's
attribution graph and its pruning), interventions (switching components off and on), panels (the report's
component panels, cached under RUN/serve/), session (what is loaded once), views (the JSON API's requests and
answers), app (FastAPI routes, the token check, the page), templates/ (the page). docs/serve.md describes the API.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spd.lazy import lazy_exports

__getattr__, __dir__, _LAZY_NAMES = lazy_exports(
    __name__,
    {
        "spd.serve.app": ("check_bind", "create_app"),
        "spd.serve.session": ("ServedRun", "open_served_run"),
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
    """Load the run, bind, then serve with uvicorn until interrupted; RUN/serve/server.json says where meanwhile.

    ValueError for what the user must change (a bind beyond loopback without a token, an unusable device, a run
    with nothing to serve, a port in use): the socket is bound before anything is announced, so a busy port fails
    here instead of inside uvicorn, and a second server never touches the first one's server.json."""
    import uvicorn

    from spd.serve.app import LOOPBACK_HOSTS, check_bind, create_app
    from spd.serve.session import open_served_run
    from spd.utils import atomic_write_json, resolve_device

    check_bind(host, token)
    try:
        device = str(resolve_device(device))
    except RuntimeError as e:  # CUDA asked for where there is none, or a device string torch does not know
        raise ValueError(f"--device {device!r}: {e}") from None
    sock = _bind(host, port)
    try:
        run = open_served_run(run_dir, status, device, log)
        allowed = ["127.0.0.1", "localhost", "[::1]", "::1"] if host in LOOPBACK_HOSTS else None
        app = create_app(run, token, allowed_hosts=allowed)
        shown_host = f"[{host}]" if ":" in host else host
        url = f"http://{shown_host}:{sock.getsockname()[1]}/"
        server_file = run.serve_dir / SERVER_FILE
        atomic_write_json(
            server_file,
            {
                "url": url,
                "host": host,
                "port": sock.getsockname()[1],
                "pid": os.getpid(),
                "device": device,
                "token_required": bool(token),
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        log(f"serve: {url}" + ("?token=<your token>" if token else "") + "  (Ctrl-C stops it)")
        try:
            uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shuts down gracefully, then re-raises the signal it caught
            pass
        finally:
            _remove_own(server_file)
        log("serve: stopped")
    finally:
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); ValueError when the address cannot be bound (in use, not ours)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ValueError(f"cannot serve on {host}:{port}: {e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        hint = " (another server? pick another --port)" if e.errno == errno.EADDRINUSE else ""
        raise ValueError(f"cannot serve on {host}:{port}: {e.strerror or e}{hint}") from None
    return sock


def _remove_own(server_file: Path) -> None:
    """Remove server.json if it still describes this process (never another server's)."""
    try:
        if json.loads(server_file.read_text()).get("pid") == os.getpid():
            server_file.unlink()
    except (OSError, ValueError):
        pass


__all__ = ["SERVER_FILE", *_LAZY_NAMES, "serve"]
