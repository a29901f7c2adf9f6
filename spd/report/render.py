"""Render the report model into one self-contained HTML page and write it atomically.

The page needs nothing outside itself: CSS, JavaScript, plots (inline SVG) and data are all inlined, so it
opens from a cluster's shared filesystem in any current browser, offline. Data go in two forms:
  - the component table (one row per alive component) as plain JSON, parsed at load;
  - everything a component panel shows, in chunks of `chunk_size` components, each gzip-compressed and
    base64-encoded: a 10,000-component page stays a few MB, and opening a component inflates only its chunk
    (the browser's DecompressionStream).
The table is rendered one page at a time from the JSON, so the DOM holds at most a page of rows.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from spd.report.plots import render_plots
from spd.utils import atomic_write_bytes

TEMPLATES = Path(__file__).parent / "templates"
REPORT_FILE = "index.html"
# Beside the page: sets window.SPD_REPORT_STALE. Written as null with every page; whoever later changes a stage
# the page shows (the pipeline's run/rerun) rewrites it with those stages, and the page then says it is stale.
STALE_FILE = "stale.js"
FRESH_SCRIPT = "window.SPD_REPORT_STALE = null;\n"


def script_json(obj: Any) -> Markup:
    """JSON safe inside <script type="application/json">: '<' is escaped so no '</script>' or '<!--' can
    appear, whatever the labels or token texts contain."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Markup(text.replace("<", "\\u003c"))


def pack(obj: Any) -> str:
    """gzip (deterministic: no timestamp) + base64 of the compact JSON of `obj`."""
    raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def unpack(text: str) -> Any:
    """Inverse of `pack` (tests and tools read the page's chunks with it)."""
    return json.loads(gzip.decompress(base64.b64decode(text)).decode("utf-8"))


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["seconds"] = _seconds
    env.filters["usd"] = lambda v: "-" if v is None else f"${v:,.4f}"
    env.filters["num"] = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
    return env


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.2f} h"


def render_html(model: dict[str, Any]) -> str:
    """The page for a report model (spd.report.data.gather_report)."""
    chunk_size = int(model["options"]["chunk_size"])
    keys = [row[0] for row in model["rows"]]
    chunks = [pack([model["details"][k] for k in keys[i : i + chunk_size]]) for i in range(0, len(keys), chunk_size)]
    page_meta = {
        "format": model["format"],
        "run_id": model["run"]["run_id"],
        "chunk_size": chunk_size,
        "n_chunks": len(chunks),
        "ci_threshold": model["ci_threshold"],
        "scorers": {
            name: {"available": model["sections"][name]["available"], "chance": model["sections"][name]["chance"]}
            for name in ("detection", "fuzzing", "intruder")
        },
        "sections": {name: model["sections"][name]["available"] for name in model["sections"]},
    }
    template = _environment().get_template("report.html.j2")
    return template.render(
        model=model,
        plots=[{**p, "svg": Markup(p["svg"]) if p["svg"] else None} for p in render_plots(model["plot_data"])],
        table_json=script_json({"columns": model["columns"], "rows": model["rows"]}),
        meta_json=script_json(page_meta),
        tokens_packed=pack(model["tokens"]),
        chunks=chunks,
        css=Markup((TEMPLATES / "report.css").read_text()),
        js=Markup((TEMPLATES / "report.js").read_text()),
    )


def write_report(model: dict[str, Any], run_dir: Path) -> Path:
    """Render and write RUN/report/index.html atomically (temp file in the same directory, then rename), and its
    staleness script as fresh (after the page: a kill between the two leaves a fresh page still marked stale)."""
    path = Path(run_dir) / "report" / REPORT_FILE
    atomic_write_bytes(path, render_html(model).encode("utf-8"))
    atomic_write_bytes(path.with_name(STALE_FILE), FRESH_SCRIPT.encode())
    return path
