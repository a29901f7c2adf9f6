"""The run report, as the CLI's `report` command reaches it: a thin wrapper over `spd.report`.

Not a stage of the DAG (it is in BUILTIN_TOOL_MODULES, not BUILTIN_STAGE_MODULES): the report reads a run's stores
after (or while) the stages run, on the login node, and writes RUN/report/index.html. The CLI reaches this module
through the registry (pipeline.registry.tool) only when the command runs, and passes the run record it computed
(the `status --json` object, docs/cli.md), so neither pipeline/ learns about SPD nor spd/ about the orchestrator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_report(run_dir: Path, status_json: dict[str, Any], options: dict[str, Any] | None = None) -> Path:
    """Write `run_dir`/report/index.html from the run's stores and `status_json` (the `status --json`
    object), with `options` (spd.report.ReportOptions fields, e.g. pmi_min_count); returns the page's path.
    Stages without output are shown as such, never raise."""
    from spd.report import ReportOptions
    from spd.report import build_report as build  # heavy imports (duckdb, matplotlib) only when asked

    return build(Path(run_dir), status_json, ReportOptions(**(options or {})))
