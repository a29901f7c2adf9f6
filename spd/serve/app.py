"""The FastAPI app of `run.py serve`: the page (GET /) and the JSON API under /api (docs/serve.md).

Access: bound to a loopback address the app needs no token; bound anywhere else it refuses to start without
one (`check_bind`), and with a token every request must carry it (header `Authorization: Bearer <token>`, or
`?token=` in the page's URL, which the page then sends as the header). The token is compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from spd.serve.session import ServedRun
from spd.serve.views import (
    GraphRequest,
    InterventionHistory,
    InterventionRequest,
    PromptRequest,
    graph_view,
    intervention_view,
    prompt_view,
)

TEMPLATES = Path(__file__).parent / "templates"
REPORT_TEMPLATES = Path(__file__).parent.parent / "report" / "templates"  # the component panel is the report's
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("spd.serve")


def check_bind(host: str, token: str | None) -> None:
    """Refuse a bind beyond this machine without a token (anyone on the network could drive the model)."""
    if host not in LOOPBACK_HOSTS and not token:
        raise ValueError(
            f"serving on {host!r} makes the app reachable from other machines: give --token (or set "
            "SPD_SERVE_TOKEN), or keep the default --host 127.0.0.1 and reach it through an SSH tunnel"
        )


def _page(run: ServedRun) -> str:
    """The page: serve.html.j2 with its CSS and scripts inlined (the panel's script and styles are the report's);
    jinja2 escapes the one data string it embeds, the run id."""
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined)
    return env.get_template("serve.html.j2").render(
        title=f"SPD serve: {run.run_id}",
        css=Markup((TEMPLATES / "serve.css").read_text() + (REPORT_TEMPLATES / "panel.css").read_text()),
        panel_js=Markup((REPORT_TEMPLATES / "panel.js").read_text()),
        serve_js=Markup((TEMPLATES / "serve.js").read_text()),
    )


def _authorized(request: Request, token: str) -> bool:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    given = credentials.strip() if scheme.lower() == "bearer" else request.query_params.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


def create_app(run: ServedRun, token: str | None = None, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The app serving `run`; with `token`, every request must carry it; with `allowed_hosts`, a request naming
    another Host is refused (a loopback server: a web page elsewhere cannot reach it by DNS rebinding)."""
    app = FastAPI(title=f"SPD serve: {run.run_id}", docs_url="/api/docs", openapi_url="/api/openapi.json")
    history = InterventionHistory()
    page = _page(run)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    if token:

        @app.middleware("http")
        async def require_token(request: Request, call_next):
            if not _authorized(request, token):
                return JSONResponse({"detail": "missing or wrong token"}, status_code=401)
            return await call_next(request)

    @app.exception_handler(ValueError)
    async def bad_request(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        """Anything else (out of memory, a bug): the traceback goes to the server's log, the reason to the page."""
        log.exception("serve: %s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"the server failed: {type(exc).__name__}: {exc}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/run")
    def run_info() -> dict[str, Any]:
        return run.info()

    @app.post("/api/prompt")
    def prompt(request: PromptRequest) -> dict[str, Any]:
        return run.call(prompt_view, run, request)

    @app.post("/api/graph")
    def graph(request: GraphRequest) -> dict[str, Any]:
        return run.call(graph_view, run, request)

    @app.post("/api/intervene")
    def intervene(request: InterventionRequest) -> dict[str, Any]:
        return run.call(intervention_view, run, request, history)

    @app.get("/api/interventions")
    def interventions() -> list[dict[str, Any]]:
        return history.entries()

    @app.get("/api/components/{key:path}")
    def component(key: str) -> dict[str, Any]:
        panel = run.panels.panel(key)
        if panel is None:
            raise HTTPException(404, f"no component {key!r} in this run's harvest")
        return panel

    return app
