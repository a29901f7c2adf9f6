"""One scoring run, whatever the kind: plan trials, ask (resumably), score, write the store.

1. The kind's planner yields one `WorkItem` per trial, lazily (the LLM layer pulls an item only when a
   request slot is free), and records one `ComponentPlan` per component as it goes: its trial keys, or the
   reason it gets none.
2. `run_llm` answers the items into the journal `out/llm/` (JSONL parts, saved as they arrive). A rerun
   after a kill rebuilds the same trials (seeded per component and trial, keys carry a digest of the
   content) and asks only for keys without an answer.
3. Every planned trial's final row is read back from the journal; the kind's `outcome` turns an answer
   into what it counts for (a ValueError marks the trial failed, it never crashes the run) and the kind's
   `summarize` turns a component's outcomes into its score, NULL with the reason when nothing usable came
   back.
4. `write_score_store` builds out/<kind>.duckdb atomically.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spd.interp.call import LLMCallMeta
from spd.interp.llm import run_llm
from spd.interp.results import ResultRow, final_rows
from spd.interp.scoring.common import ScoringSettings
from spd.interp.scoring.store import ScoreRecord, TrialRecord, store_file, write_score_store
from spd.interp.tasks import Task, WorkItem

JOURNAL_DIR = "llm"


@dataclass
class ComponentPlan:
    """One component's part of a run: its trials' keys, or why it has none."""

    component: int
    key: str
    layer: str
    firing_density: float | None
    label: str | None = None
    trial_keys: list[str] = field(default_factory=list)
    error: str | None = None
    """Why the component gets no trials (no label, no examples, no negatives, no donor, ...)."""


Planner = Callable[[list[ComponentPlan]], Iterator[WorkItem[Any]]]
Outcome = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
"""(validated answer, trial meta) -> what the trial counts for; ValueError when the answer is unusable."""
Summarize = Callable[[ComponentPlan, list[dict[str, Any]], int], ScoreRecord]
"""(plan, outcomes of the successful trials, number of failed trials) -> the component's score row."""


def _trial_record(
    plan: ComponentPlan, index: int, item_key: str, row: ResultRow | None, outcome: Outcome
) -> tuple[TrialRecord, dict[str, Any] | None]:
    if row is None:
        record = TrialRecord(
            item_key=item_key,
            component=plan.component,
            key=plan.key,
            trial=index,
            status="missing",
            n_shown=0,
            truth_json="{}",
            answer_json=None,
            outcome_json=None,
            error_kind="missing",
            error="no row for this trial in the results journal",
        )
        return record, None
    status, error_kind, error = row.status, row.error_kind, row.error
    result: dict[str, Any] | None = None
    if row.status == "ok":
        try:
            if row.output is None:
                raise ValueError("no answer recorded")
            result = outcome(row.output, row.extra)
        except (KeyError, TypeError, ValueError) as e:
            status, error_kind, error = "failed", "invalid_answer", f"answer unusable for this trial: {e}"
    record = TrialRecord(
        item_key=item_key,
        component=plan.component,
        key=plan.key,
        trial=index,
        status=status,
        n_shown=int(row.extra.get("n_shown", 0)),
        truth_json=json.dumps(row.extra, sort_keys=True),
        answer_json=None if row.output is None else json.dumps(row.output, sort_keys=True),
        outcome_json=None if result is None else json.dumps(result, sort_keys=True),
        **LLMCallMeta.of(row, error_kind=error_kind, error=error),
    )
    return record, result


def failure_summary(records: list[TrialRecord]) -> str:
    """'3 of 3 trials failed: timeout (2), invalid_answer (1); last: <message>'."""
    failed = [r for r in records if r.status != "ok"]
    counts: dict[str, int] = {}
    for r in failed:
        counts[r.error_kind or r.status] = counts.get(r.error_kind or r.status, 0) + 1
    kinds = ", ".join(f"{k} ({n})" for k, n in sorted(counts.items()))
    last = failed[-1].error if failed else None
    return f"{len(failed)} of {len(records)} trials failed: {kinds}; last: {last}"


def run_scoring(
    kind: str,
    settings: ScoringSettings,
    task: Task[Any, Any],
    planner: Planner,
    outcome: Outcome,
    summarize: Summarize,
    out_dir: Path,
    meta: dict[str, Any],
) -> Path:
    """Run one scorer end to end into out_dir (journal under out_dir/llm) and return the store's path."""
    out_dir = Path(out_dir)
    journal_dir = out_dir / JOURNAL_DIR
    plans: list[ComponentPlan] = []
    summary = run_llm(settings.llm, journal_dir, task, planner(plans))
    rows = {row.key: row for row in final_rows(journal_dir, task.name)}
    scores: list[ScoreRecord] = []
    trials: list[TrialRecord] = []
    for plan in plans:
        if plan.error is not None:
            scores.append(summarize(plan, [], 0))
            continue
        records, outcomes = [], []
        for index, item_key in enumerate(plan.trial_keys):
            record, result = _trial_record(plan, index, item_key, rows.get(item_key), outcome)
            records.append(record)
            if result is not None:
                outcomes.append(result)
        trials.extend(records)
        score = summarize(plan, outcomes, len(records) - len(outcomes))
        if score.score is None and score.error is None:
            raise AssertionError("summarize returned neither a score nor an error")
        if score.score is None and not outcomes:
            score = replace(score, error=failure_summary(records))
        costs = [r.cost_usd for r in records if r.cost_usd is not None]
        scores.append(replace(score, cost_usd=sum(costs) if costs else None))
    full_meta = {
        **meta,
        "kind": kind,
        "provider": settings.llm.provider,
        "model": settings.llm.model_name,
        "config": settings.model_dump(mode="json"),
        "llm_run": asdict(summary),
        "journal": str(journal_dir),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return write_score_store(out_dir / store_file(kind), kind, scores, trials, full_meta)
