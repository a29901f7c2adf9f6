"""What detection and fuzzing share: labelled components, held-out examples, trials, scoring answers by class.

Both judge a label on examples the labeller never saw: the labels store records, per component, the stream
positions of the firings its label was written from, and every example at one of those positions (in
either the uniform or the top list) is held out. Both ask `n_trials` questions per component, each showing
numbered windows of two classes (`trial_item` records which numbers are which), and score a component by
balanced accuracy over the pooled judged examples of its successful trials (`LabelledScorer.run`). A
scorer supplies only its prompt and what one component's trials show (`ComponentTrials`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from spd.harvest.schema import ActivationExample, ComponentSummary
from spd.harvest.store import HarvestStore
from spd.interp.labels_store import LabelRecord, LabelsStore
from spd.interp.scoring.common import (
    Confusion,
    ScoringSettings,
    Window,
    balanced_accuracy,
    balanced_accuracy_interval,
    content_digest,
)
from spd.interp.scoring.render import ShownExample, numbered_excerpts
from spd.interp.scoring.runner import ComponentPlan, Outcome, Summarize, run_scoring
from spd.interp.scoring.store import ScoreRecord
from spd.interp.tasks import Task, WorkItem

BALANCED_ACCURACY_CHANCE = 0.5

In = TypeVar("In", bound=BaseModel)
S = TypeVar("S", bound="LabelledScoringSettings")

ComponentTrials = Callable[[LabelRecord], list[WorkItem[Any]] | str]
"""One labelled component's trials (its `record.label` is set), or in words why it has none."""


class LabelledScoringSettings(ScoringSettings):
    """Settings of a scorer that judges labels: the shared ones plus how many trials per label."""

    n_trials: int = Field(default=5, ge=1, le=100, description="Trials (LLM calls) per component.")


def label_judging_prompt(label: str, examples: Sequence[ShownExample], shown: str, question: str) -> str:
    """A label-judging prompt: what is studied, the label, what the excerpts are (`shown`), them numbered, the
    question (with the JSON answer asked for)."""
    return (
        "We are studying one component of a neural network language model. It has been described by this label:\n"
        f'"{label}"\n\n'
        f"{shown}\n\n"
        f"{numbered_excerpts(examples)}\n\n"
        f"{question}"
    )


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


def trial_item(
    component_key: str, trial: int, item_input: In, shown: Sequence[tuple[Window, bool]], **extra: Any
) -> WorkItem[In]:
    """The work item of one trial: `shown` in the order the prompt numbers them, each with its class.

    The key names the component, the trial and a digest of what is asked (a changed prompt input is a new
    question on rerun); the meta records which numbers are positives and negatives (what `class_outcome`
    checks the answer against), the windows shown, and any `extra` the scorer adds.
    """
    meta: dict[str, Any] = {
        "component": component_key,
        "trial": trial,
        "n_shown": len(shown),
        "positives": [i for i, (_, positive) in enumerate(shown, start=1) if positive],
        "negatives": [i for i, (_, positive) in enumerate(shown, start=1) if not positive],
        "windows": [w.record() for w, _ in shown],
        **extra,
    }
    return WorkItem(f"{component_key}/trial{trial}/{content_digest(item_input.model_dump_json())}", item_input, meta)


def labelled_trial_items(
    harvest: HarvestStore,
    labels: LabelsStore,
    limit: int | None,
    plans: list[ComponentPlan],
    component_trials: ComponentTrials,
) -> Iterator[WorkItem[Any]]:
    """One item per trial of every labelled component; appends each component's plan to `plans`.

    A component without a label (or missing from the harvest) gets its plan's error and no trials; so does
    one for which `component_trials` returns a reason instead of trials.
    """
    for summary, record in labelled_components(harvest, labels, limit):
        plan = component_plan(summary, record)
        plans.append(plan)
        if plan.error is not None:
            continue
        trials = component_trials(record)
        if isinstance(trials, str):
            plan.error = trials
            continue
        plan.trial_keys = [item.key for item in trials]
        yield from trials


@dataclass(frozen=True)
class LabelledScorer(Generic[S]):
    """What makes a label-judging scorer (detection, fuzzing); `run` does the rest the same way for both."""

    kind: str
    """Score kind: names the store (out/<kind>.duckdb) and seeds every trial."""
    prompt_version: str
    task: Task[Any, Any]
    """The LLM task: prompt, answer schema, checks, offline heuristic answer."""
    trials: Callable[[HarvestStore, S, int], ComponentTrials]
    """(harvest, settings, seed) -> the builder of one labelled component's trials (made once per run)."""
    answer_field: str
    """The answer's list of the example numbers judged positive."""

    def run(self, settings: S, harvest_dir: Path, labels_dir: Path, out_dir: Path, seed: int) -> Path:
        """Score every label of `labels_dir` on the harvest of `harvest_dir` by balanced accuracy; returns the store."""
        with HarvestStore.open(harvest_dir) as harvest, LabelsStore.open(labels_dir) as labels:
            component_trials = self.trials(harvest, settings, seed)
            return run_scoring(
                self.kind,
                settings,
                self.task,
                lambda plans: labelled_trial_items(harvest, labels, settings.limit, plans, component_trials),
                class_outcome(self.answer_field),
                balanced_accuracy_summary(settings.confidence_level),
                out_dir,
                {"prompt_version": self.prompt_version, "seed": seed, "sources": sources_meta(harvest, labels)},
            )


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
