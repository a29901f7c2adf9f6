"""The run report: a static HTML page and its data files (report/index.html + report/components/) to browse a
run's components offline.

    build_report(run_dir, status)  -> run_dir/report/index.html
    gather_report(run_dir, status) -> the plain JSON-able model the page is rendered from

Module map: locate (the run record: where each stage's outputs are), options (what is embedded), numbers (rounding),
decompose_data / harvest_data / attributions_data / interp_data / logit_effects (one reader per source, each
tolerant of a missing stage), overview (the per-module summary), data (the model), plots (matplotlib -> inline
SVG), render (jinja2 templates in templates/, the components/ files, atomic writes). docs/report.md describes
the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spd.report.data import gather_report
from spd.report.options import ReportOptions
from spd.report.render import write_report


def build_report(run_dir: Path, status: dict[str, Any], options: ReportOptions | None = None) -> Path:
    """Gather the run's data and write its report page; returns the page's path."""
    return write_report(gather_report(run_dir, status, options), run_dir)


__all__ = ["ReportOptions", "build_report", "gather_report"]
