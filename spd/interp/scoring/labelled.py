"""What detection and fuzzing share: labelled components, held-out examples, scoring answers by class.

Both judge a label on examples the labeller never saw: the labels store records, per component, the stream
positions of the firings its label was written from, and every example at one of those positions (in
either the uniform or the top list) is held out. Both score a component by balanced accuracy over the
pooled judged examples of its successful trials.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spd.harvest.schema import ActivationExample, ComponentSummary
from spd.harvest.store import HarvestStore
from spd.interp.labels_store import LabelRecord, LabelsStore
from spd.interp.scoring.common import (
    Confusion,
    balanced_accuracy,
    balanced_accuracy_interval,
)
from spd.interp.scoring.runner import ComponentPlan, Outcome, Summarize
from spd.interp.scoring.store import ScoreRecord

BALANCED_ACCURACY_CHANCE = 0.5


def labelled_components(
    harvest: HarvestStore, labels: LabelsStore, limit: int | None
) -> Iterator[tuple[ComponentSummary | None, LabelRecord]]:
    """Every labels-store row (failed labels included) with its harvest summary, densest first, up to `limit`."""
    summaries = {s.key: s for s in harvest.summaries()}
    rows = [(summaries.get(record.key), record) for record in labels.labels()]
    rows.sort(key=lambda pair: (-(pair[0].firing_density if pair[0] else -1.0), pair[1].component))
    yield from rows[:limit] if limit is not None else rows


def component_plan(summary: ComponentSummary | None, record: LabelRecord) -> ComponentPlan:
    """The plan of a labelled component; with an error when it cannot be scored at all."""
    plan = ComponentPlan(
        component=record.component,
        key=record.key,
        layer=record.layer,
        firing_density=summary.firing_density if summary else None,
        label=record.label,
    )
    if summary is None:
        plan.error = "component not in the harvest store (labels and harvest come from different runs?)"
    elif record.label is None:
        plan.error = f"no label: {record.error_kind or 'error'}: {record.error}"
    return plan


def held_out_examples(examples: list[ActivationExample], record: LabelRecord) -> list[ActivationExample]:
    """The examples except those at firings the label was written from (in their order)."""
    return [e for e in examples if not record.is_held_out(e)]


def class_outcome(answer_field: str) -> Outcome:
    """Outcome of a trial whose answer lists the example numbers judged positive."""

    def outcome(answer: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        predicted = [int(n) for n in answer[answer_field]]
        n_shown = int(meta["n_shown"])
        if any(not 1 <= n <= n_shown for n in predicted):
            raise ValueError(f"example numbers {predicted} outside 1..{n_shown}")
        positives, negatives = set(meta["positives"]), set(meta["negatives"])
        c = Confusion()
        c.add_answer(set(predicted), positives, negatives)
        return {"tp": c.tp, "fn": c.fn, "tn": c.tn, "fp": c.fp}

    return outcome


def balanced_accuracy_summary(confidence_level: float) -> Summarize:
    """Score = balanced accuracy of the pooled counts of the successful trials, with its interval."""

    def summarize(plan: ComponentPlan, outcomes: list[dict[str, Any]], n_failed: int) -> ScoreRecord:
        pooled = Confusion()
        for o in outcomes:
            pooled.tp, pooled.fn, pooled.tn, pooled.fp = (
                pooled.tp + o["tp"],
                pooled.fn + o["fn"],
                pooled.tn + o["tn"],
                pooled.fp + o["fp"],
            )
        score = balanced_accuracy(pooled)
        interval = balanced_accuracy_interval(pooled, confidence_level)
        error = plan.error
        if error is None and score is None:
            error = (
                "no successful trial"
                if not outcomes
                else f"one class was never judged (positives {pooled.n_positive}, negatives {pooled.n_negative})"
            )
        judged = bool(outcomes)
        return ScoreRecord(
            component=plan.component,
            key=plan.key,
            layer=plan.layer,
            firing_density=plan.firing_density,
            label=plan.label,
            score=score,
            ci_low=interval[0] if interval else None,
            ci_high=interval[1] if interval else None,
            chance=BALANCED_ACCURACY_CHANCE,
            n_trials=len(plan.trial_keys),
            n_trials_ok=len(outcomes),
            n_trials_failed=n_failed,
            n_positive=pooled.n_positive if judged else None,
            n_negative=pooled.n_negative if judged else None,
            tp=pooled.tp if judged else None,
            fn=pooled.fn if judged else None,
            tn=pooled.tn if judged else None,
            fp=pooled.fp if judged else None,
            error=None if score is not None else error,
        )

    return summarize


def sources_meta(harvest: HarvestStore, labels: LabelsStore | None) -> dict[str, Any]:
    """Which stores a run read (paths and their identifying provenance)."""
    prov = harvest.provenance()
    meta: dict[str, Any] = {
        "harvest": {
            "path": str(Path(harvest.path).resolve()),
            "merged_at": prov.get("merged_at"),
            "n_tokens": prov.get("n_tokens"),
            "seed": prov.get("seed"),
            "ci_threshold": prov.get("ci_threshold"),
        }
    }
    if labels is not None:
        meta["labels"] = {"path": str(Path(labels.path).resolve()), **labels.meta()}
    return meta
