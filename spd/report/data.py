"""Gather everything the report shows into one plain, JSON-able model of a run.

Input: the run directory and the run record: the status object `python run.py status RUN --json` prints
(docs/cli.md), which gives each stage's state, times and output directory (spd.report.locate.RunRecord). Every stage is optional: a stage that is not in the pipeline,
has not finished or left no store is shown with its state and a reason, never as an error.

The model (a dict) has:
    run          provenance: run id, executor, code version, seeds, library versions
    stages       one entry per SPD stage: state, tasks, time, seed, cost (LLM stages), output availability
    sections     per-source facts (decompose, harvest, attributions, autointerp, detection, fuzzing, intruder)
    columns/rows the component table: one row per alive component
    modules      the module overview (spd.report.overview): densities, CI-L0, labels and scores per module
    details      key -> everything the component panel shows
    tokens       token id -> display text, for every token the details mention
    plot_data    what the plots are drawn from (densities, CI-L0, scores); not embedded in the page
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from spd.report.attributions_data import AttributionsData, read_attributions
from spd.report.decompose_data import DecomposeData, read_decompose
from spd.report.harvest_data import HarvestData, read_harvest, token_texts, tokens_used, visible_token
from spd.report.interp_data import SCORERS, LabelsData, ScoresData, read_labels, read_scores
from spd.report.locate import LLM_STAGES, SPD_STAGES, RunRecord, StageRecord
from spd.report.logit_effects import LogitEffects, read_logit_effects
from spd.report.options import ReportOptions
from spd.report.overview import module_overview

REPORT_FORMAT = "spd-report/1"
# What reading a store can raise when it is damaged, of another format, or from another version of a stage
# (DuckDB's errors, the file system's, and the stores' own format errors, which are ValueErrors: "not an
# attributions store", a JSON column that does not parse): the report shows it in place of that store's
# data instead of failing. Anything else (KeyError, TypeError, ...) is a bug of a reader and must surface.
READ_ERRORS: tuple[type[BaseException], ...] = (duckdb.Error, OSError, ValueError)
T = TypeVar("T")
TOP_TOKENS = 3  # input tokens (by PMI) in the table's column, which the search box also searches
COLUMNS: list[dict[str, str]] = [
    {"id": "key", "title": "component", "type": "text"},
    {"id": "module", "title": "module", "type": "text"},
    {"id": "density", "title": "density", "type": "num"},
    {"id": "firings", "title": "firings", "type": "num"},
    {"id": "label", "title": "label", "type": "text"},
    {"id": "tokens", "title": "top input tokens", "type": "text"},
    {"id": "confidence", "title": "confidence", "type": "text"},
    {"id": "detection", "title": "detection", "type": "num"},
    {"id": "fuzzing", "title": "fuzzing", "type": "num"},
    {"id": "intruder", "title": "intruder", "type": "num"},
]


def _split_key(key: str) -> tuple[str, int | None]:
    module, _, index = key.rpartition(":")
    return (module, int(index)) if index.isdigit() else (key, None)


def _stages(record: RunRecord, outputs: dict[str, tuple[bool, str | None, float | None]]):
    """One row per stage: SPD stages in DAG order, then any other stage the plan has (in plan order)."""
    names = [*SPD_STAGES, *(n for n in record.stages if n not in SPD_STAGES)]
    rows = []
    for name in names:
        st = record.stages.get(name)
        available, reason, cost = outputs.get(name, (False, None, None))
        if st is None:
            state = "EXTERNAL" if record.is_external(name) else "NOT_IN_PIPELINE"
            st = StageRecord(name)
        else:
            state = st.state or "UNKNOWN"
        tasks = st.tasks
        rows.append(
            {
                "name": name,
                "state": state,
                "in_pipeline": name in record.stages,
                "external_path": str(record.out_dir(name)) if record.is_external(name) else None,
                "key": st.key,
                "seed": st.seed,
                "tasks_done": tasks.get("done"),
                "tasks_total": tasks.get("total", st.num_tasks),
                "tasks_failed": tasks.get("failed"),
                "tasks_running": tasks.get("running"),
                "task_seconds": st.elapsed_s,
                "wall_seconds": st.wall_s,
                "started_at": st.started_at,
                "finished_at": st.finished_at,
                "error": st.error,
                "llm": name in LLM_STAGES,
                "cost_usd": cost,
                "output": "available" if available else (reason or "none"),
            }
        )
    return rows


def _run_info(record: RunRecord, run_dir: Path) -> dict[str, Any]:
    return {
        "run_id": record.run_id or run_dir.name,
        "run_dir": str(run_dir),
        "executor": record.executor,
        "created_at": record.created_at,
        "pipeline_file": record.pipeline_file,
        "seed": record.seed,
        "code": record.code,
        "versions": record.versions,
        "last_invocation": record.last_command,
    }


def _universe(harvest: HarvestData, labels: LabelsData, scores: dict[str, ScoresData]) -> list[str]:
    """Keys of the table's components: the harvest's alive ones, else every component something scored."""
    if harvest.available:
        return list(harvest.alive)
    keys = set(labels.labels)
    for s in scores.values():
        keys |= set(s.scores)
    return sorted(keys, key=lambda k: (_split_key(k)[0], _split_key(k)[1] or 0, k))


def _details(
    key: str,
    summary: dict[str, Any] | None,
    harvest: HarvestData,
    attributions: AttributionsData,
    labels: LabelsData,
    scores: dict[str, ScoresData],
    effects: LogitEffects,
) -> dict[str, Any]:
    module, index = _split_key(key)
    detail: dict[str, Any] = {"key": key, "module": module, "index": index}
    if summary is not None:
        detail.update(
            firings=summary["firing_count"], density=summary["density"], mean_ci_firing=summary["mean_ci_firing"]
        )
    if harvest.available:
        detail["examples"] = harvest.examples.get(key, {"scale": None, "top": [], "random": []})
        detail["token_stats"] = harvest.token_stats.get(key, {"input": [], "output": []})
        detail["cofiring"] = harvest.cofiring.get(key, [])
    if attributions.available:
        detail["attributions"] = attributions.edges.get(key, {"in": [], "out": []})
    if labels.available:
        detail["label"] = labels.labels.get(key)
    if effects.available:
        detail["logit_effects"] = effects.effects.get(key)  # None: not a residual-stream writer
    detail["scores"] = {name: s.scores.get(key) for name, s in scores.items() if s.available}
    return detail


def _row(detail: dict[str, Any], tokens: dict[int, str]) -> list[Any]:
    label = detail.get("label") or {}
    scores = detail.get("scores") or {}
    top = (detail.get("token_stats") or {}).get("input", [])[:TOP_TOKENS]
    return [
        detail["key"],
        detail["module"],
        detail.get("density"),
        detail.get("firings"),
        label.get("label"),
        " ".join(visible_token(tokens.get(row[0], f"#{row[0]}")) for row in top) or None,
        label.get("confidence"),
        *((scores.get(name) or {}).get("score") for name in SCORERS),
    ]


def _section(data: Any) -> dict[str, Any]:
    return {"available": data.available, "reason": data.reason, "path": getattr(data, "path", None), **data.info}


def _guarded(read: Callable[[], T], unavailable: Callable[[str], T]) -> T:
    """`read()`, or `unavailable(reason)` when the store cannot be read (one bad store never sinks the page)."""
    try:
        return read()
    except READ_ERRORS as e:
        return unavailable(f"cannot read: {type(e).__name__}: {e}")


def gather_report(run_dir: Path, status: dict[str, Any], options: ReportOptions | None = None) -> dict[str, Any]:
    """The report model of the run at `run_dir` (see the module docstring); `status` is the status JSON."""
    options = options or ReportOptions()
    run_dir = Path(run_dir).resolve()
    record = RunRecord.from_status(status)

    def stage(name: str, read: Callable[[Path | None], T], unavailable: Callable[[str], T]) -> T:
        why = record.unlocated(name)
        return unavailable(why) if why else _guarded(lambda: read(record.out_dir(name)), unavailable)

    decompose = stage("decompose", read_decompose, lambda why: DecomposeData(False, why))
    harvest = stage("harvest", lambda d: read_harvest(d, options), lambda why: HarvestData(False, why))
    attributions = stage(
        "attributions", lambda d: read_attributions(d, options), lambda why: AttributionsData(False, why)
    )
    labels = stage("autointerp", read_labels, lambda why: LabelsData(False, why))
    scores = {
        name: stage(name, lambda d, n=name: read_scores(n, d), lambda why, n=name: ScoresData(n, False, why))
        for name in SCORERS
    }

    outputs: dict[str, tuple[bool, str | None, float | None]] = {
        "decompose": (decompose.available, decompose.reason, None),
        "harvest": (harvest.available, harvest.reason, None),
        "attributions": (attributions.available, attributions.reason, None),
        "autointerp": (labels.available, labels.reason, labels.cost_usd),
        **{name: (s.available, s.reason, s.cost_usd) for name, s in scores.items()},
    }
    summaries = {s["key"]: s for s in harvest.summaries}
    keys = _universe(harvest, labels, scores)
    effects = read_logit_effects(record.out_dir("decompose"), keys, options.logit_effects)
    details = {key: _details(key, summaries.get(key), harvest, attributions, labels, scores, effects) for key in keys}
    tokens = token_texts(harvest, tokens_used(harvest) | attributions.token_ids() | effects.token_ids())
    sections = {
        "decompose": {"available": decompose.available, "reason": decompose.reason, **decompose.info},
        "harvest": _section(harvest),
        "attributions": _section(attributions),
        "autointerp": _section(labels),
        **{name: {**_section(s), "chance": s.chance} for name, s in scores.items()},
    }
    return {
        "format": REPORT_FORMAT,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": _run_info(record, run_dir),
        "stages": _stages(record, outputs),
        "sections": sections,
        "ci_threshold": harvest.info.get("ci_threshold"),
        "columns": COLUMNS,
        "rows": [_row(details[key], tokens) for key in keys],
        "details": details,
        "tokens": {str(t): text for t, text in sorted(tokens.items())},
        "modules": module_overview(
            harvest.summaries, details, decompose.l0, [n for n, s in scores.items() if s.available]
        ),
        "plot_data": {
            "densities": [[s["layer"], s["density"]] for s in harvest.summaries],
            "n_components": len(harvest.summaries),
            "l0": decompose.l0,
            "l0_curve": decompose.l0_curve,
            "eval_metrics": decompose.metrics,
            "scores": {
                name: {"chance": s.chance, "values": [e["score"] for e in s.scores.values() if e["score"] is not None]}
                for name, s in scores.items()
                if s.available
            },
        },
        "options": options.model_dump(),
    }
