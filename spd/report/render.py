"""Render the report model into RUN/report/: index.html (summary, plots, component table) and, beside it, the
component panels' data in components/, written so that a page never meets another build's data.

index.html inlines its CSS, JavaScript, plots (inline SVG), the page's facts and the component table (one row
per alive component, plain JSON parsed at load: the rows are needed to sort and filter). Everything a component
panel shows lives in components/, loaded on demand:
  - chunk-<n>.js: the details of table rows [n * chunk_size, (n + 1) * chunk_size);
  - tokens-<k>.js: the token id -> text table, TOKENS_PER_FILE ids a file (all loaded at the first panel).
Each file is one statement, `window.SPD_REPORT_CHUNK("<build>", "<name>", "<gzip+base64 JSON>")`: a <script>
tag loads it, because fetch() does not work from file:// where a script tag does. `build` is a hash of every
file's data, also in the page's meta; the page refuses a file of another build instead of mixing them.

Writing (write_report): the files go into a fresh temp directory that replaces components/ in one rename
(spd.data.io.atomic_directory), then index.html is replaced (temp file + rename), then stale.js. A reader sees
the old page with the old files, the new page with the new files, or, between the two renames, the old page
with new files, which it refuses by build id with a message to reload.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from spd.data.io import atomic_directory, write_file
from spd.report.plots import render_plots
from spd.utils import atomic_write_bytes

TEMPLATES = Path(__file__).parent / "templates"
REPORT_FILE = "index.html"
COMPONENTS_DIR = "components"  # beside index.html: the panels' data, one script per chunk
TOKENS_PER_FILE = 50_000  # token table entries per tokens-<k>.js
PACK_THREADS = 2  # JSON encoding holds the GIL, gzip does not: two threads overlap them
GZIP_LEVEL = 3  # 7% larger than level 6 on the panels' JSON, 3.5x faster to compress
# Beside the page: sets window.SPD_REPORT_STALE. Written as null with every page; whoever later changes a stage
# the page shows (the pipeline's run/rerun) rewrites it with those stages, and the page then says it is stale.
STALE_FILE = "stale.js"
FRESH_SCRIPT = "window.SPD_REPORT_STALE = null;\n"
_SIDECAR = re.compile(r'window\.SPD_REPORT_CHUNK\("([0-9a-f]+)", "([a-z]+-\d+)", "([A-Za-z0-9+/=]*)"\);\n')


@dataclass(frozen=True)
class RenderedReport:
    """A rendered report: the page, and the files of components/ (name -> bytes) it loads, of build `build`."""

    page: str
    files: dict[str, bytes]
    build: str


def script_json(obj: Any) -> Markup:
    """JSON safe inside <script type="application/json">: '<' is escaped so no '</script>' or '<!--' can
    appear, whatever the labels or token texts contain."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Markup(text.replace("<", "\\u003c"))


def pack(obj: Any) -> str:
    """gzip (deterministic: no timestamp) + base64 of the compact JSON of `obj`."""
    raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0)).decode("ascii")


def unpack(text: str) -> Any:
    """Inverse of `pack`."""
    return json.loads(gzip.decompress(base64.b64decode(text)).decode("utf-8"))


def sidecar_script(build: str, name: str, packed: str) -> bytes:
    """The content of components/<name>.js: one call that hands the page its packed data."""
    return f'window.SPD_REPORT_CHUNK("{build}", "{name}", "{packed}");\n'.encode("ascii")


def parse_sidecar(content: bytes) -> tuple[str, str, Any]:
    """(build, name, data) of the content of a components/<name>.js file (inverse of `sidecar_script`)."""
    match = _SIDECAR.fullmatch(content.decode("ascii"))
    if match is None:
        raise ValueError("not a report data file")
    return match.group(1), match.group(2), unpack(match.group(3))


def read_sidecar(path: Path) -> tuple[str, str, Any]:
    """(build, name, data) of a components/<name>.js file (tests and tools read the panels' data with it)."""
    try:
        return parse_sidecar(Path(path).read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {e}") from None


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


def _packed_data(model: dict[str, Any]) -> dict[str, str]:
    """name -> packed data of every components/ file: chunk-<n> (details in table row order), tokens-<k>.

    Packed in PACK_THREADS threads: zlib releases the GIL, so one chunk compresses while the next is encoded."""
    chunk_size = int(model["options"]["chunk_size"])
    keys = [row[0] for row in model["rows"]]
    details = model["details"]
    parts: dict[str, Any] = {
        f"chunk-{n}": [details[k] for k in keys[start : start + chunk_size]]
        for n, start in enumerate(range(0, len(keys), chunk_size))
    }
    tokens = list(model["tokens"].items())
    for k, start in enumerate(range(0, len(tokens), TOKENS_PER_FILE)):
        parts[f"tokens-{k}"] = dict(tokens[start : start + TOKENS_PER_FILE])
    with ThreadPoolExecutor(max_workers=PACK_THREADS) as pool:
        return dict(zip(parts, pool.map(pack, parts.values()), strict=True))


def _build_id(packed: dict[str, str]) -> str:
    """A hash of every file's name and data: equal data give the same id, any change another."""
    digest = hashlib.sha256()
    for name, data in packed.items():
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data.encode("ascii"))
    return digest.hexdigest()[:16]


def panel_meta(model: dict[str, Any]) -> dict[str, Any]:
    """What the component panel (templates/panel.js) reads besides a component's detail: the CI threshold, which
    stages have output, the scorers with their chance levels, the PMI minimum. The report's page and the serve app
    hand it the same."""
    return {
        "ci_threshold": model["ci_threshold"],
        "scorers": {
            name: {"available": model["sections"][name]["available"], "chance": model["sections"][name]["chance"]}
            for name in ("detection", "fuzzing", "intruder")
        },
        "sections": {name: model["sections"][name]["available"] for name in model["sections"]},
        "options": {"pmi_min_count": model["options"].get("pmi_min_count")},
    }


def render_report(model: dict[str, Any]) -> RenderedReport:
    """The page and its components/ files for a report model (spd.report.data.gather_report)."""
    packed = _packed_data(model)
    build = _build_id(packed)
    page_meta = {
        "format": model["format"],
        "run_id": model["run"]["run_id"],
        "build": build,
        "components": COMPONENTS_DIR,
        "chunk_size": int(model["options"]["chunk_size"]),
        "n_chunks": sum(1 for name in packed if name.startswith("chunk-")),
        "token_files": sum(1 for name in packed if name.startswith("tokens-")),
        **panel_meta(model),
        "modules": model.get("modules", []),  # the module overview (small: one entry per module)
    }
    template = _environment().get_template("report.html.j2")
    page = template.render(
        model=model,
        plots=[{**p, "svg": Markup(p["svg"]) if p["svg"] else None} for p in render_plots(model["plot_data"])],
        table_json=script_json({"columns": model["columns"], "rows": model["rows"]}),
        meta_json=script_json(page_meta),
        css=Markup((TEMPLATES / "report.css").read_text()),
        # the component panel, shared with the serve app: panel.css after report.css, panel.js before report.js
        panel_css=Markup((TEMPLATES / "panel.css").read_text()),
        panel_js=Markup((TEMPLATES / "panel.js").read_text()),
        js=Markup((TEMPLATES / "report.js").read_text()),
    )
    files = {f"{name}.js": sidecar_script(build, name, data) for name, data in packed.items()}
    return RenderedReport(page=page, files=files, build=build)


def render_html(model: dict[str, Any]) -> str:
    """The page alone (its components/ files are `render_report(model).files`)."""
    return render_report(model).page


def write_report(model: dict[str, Any], run_dir: Path) -> Path:
    """Render and write RUN/report/ (write_rendered); returns the page's path."""
    return write_rendered(render_report(model), run_dir)


def write_rendered(rendered: RenderedReport, run_dir: Path) -> Path:
    """Write RUN/report/: components/ as a whole (a fresh temp directory renamed over the old one), then
    index.html (temp file + rename), then its staleness script as fresh (last: a kill before it leaves a fresh
    page still marked stale). Returns the page's path."""
    report_dir = Path(run_dir) / "report"
    with atomic_directory(report_dir / COMPONENTS_DIR, overwrite=True) as tmp:
        for name, data in rendered.files.items():
            write_file(tmp / name, data)
    path = report_dir / REPORT_FILE
    atomic_write_bytes(path, rendered.page.encode("utf-8"))
    atomic_write_bytes(report_dir / STALE_FILE, FRESH_SCRIPT.encode())
    return path
