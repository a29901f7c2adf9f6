"""Fuzzing: does a label say *which tokens* the component fires on, not just which texts?

Each trial shows the label and a shuffled mix of the component's own held-out windows: `n_correct` with
every firing token marked (CI above the harvest threshold, at its recorded position) and `n_incorrect`
with the same number of marks (at least one) placed on randomly chosen tokens where the component does
not fire. Unlike the reference, a random mark never lands on a true firing, and correct and random windows
carry comparable numbers of marks. The judge lists the windows whose marks fit the label; the score is
the balanced accuracy of all judged windows pooled over successful trials (chance 0.5).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from spd.harvest.store import HarvestStore
from spd.interp.labels_store import LabelsStore
from spd.interp.schemas import FuzzingInput
from spd.interp.scoring.common import ScoringSettings, Window, content_digest, crop_window, random_highlight, trial_rng
from spd.interp.scoring.labelled import (
    balanced_accuracy_summary,
    class_outcome,
    component_plan,
    held_out_examples,
    labelled_components,
    sources_meta,
)
from spd.interp.scoring.render import numbered_excerpts, shown_example
from spd.interp.scoring.runner import ComponentPlan, run_scoring
from spd.interp.standard_tasks import fuzzing_task
from spd.interp.tasks import WorkItem

KIND = "fuzzing"
PROMPT_VERSION = "fuzzing-v1"


class FuzzingSettings(ScoringSettings):
    """How many trials per label, and what each shows."""

    n_trials: int = Field(default=5, ge=1, le=100, description="Trials (LLM calls) per component.")
    n_correct: int = Field(default=5, ge=1, le=50, description="Windows with the true firings marked, per trial.")
    n_incorrect: int = Field(
        default=5, ge=1, le=50, description="Windows with as many marks on non-firing tokens, per trial."
    )


def fuzzing_prompt(item: FuzzingInput) -> str:
    """Label + numbered marked excerpts; asks which excerpts are marked consistently with the label."""
    n = len(item.examples)
    return (
        "We are studying one component of a neural network language model. It has been described by this label:\n"
        f'"{item.label}"\n\n'
        f"Below are {n} text excerpts in which the component fires. In each, some tokens are marked <<like this>>. "
        "In some excerpts the marks sit exactly on the tokens where the component fires; in the others the same "
        "number of marks was put on randomly chosen tokens where it does not fire.\n\n"
        f"{numbered_excerpts(item.examples)}\n\n"
        "Judging by the label, which excerpts have their marks on the tokens where the component fires? Respond "
        'with a JSON object {"correct_examples": [excerpt numbers]}, using [] if none.'
    )


def fuzzing_items(
    harvest: HarvestStore, labels: LabelsStore, settings: FuzzingSettings, seed: int, plans: list[ComponentPlan]
) -> Iterator[WorkItem[FuzzingInput]]:
    """One item per trial of every labelled component; appends each component's plan to `plans`."""
    threshold = harvest.ci_threshold
    for summary, record in labelled_components(harvest, labels, settings.limit):
        plan = component_plan(summary, record)
        plans.append(plan)
        if plan.error is not None:
            continue
        assert record.label is not None
        fresh = [
            crop_window(e, settings.context_tokens)
            for e in held_out_examples(harvest.examples(record.key, settings.example_kind), record)
        ]
        if len(fresh) < 2:
            plan.error = (
                f"{len(fresh)} {settings.example_kind} example(s) left after holding out the "
                f"{len(record.example_ids)} the label was written from; a trial needs 2"
            )
            continue
        trials: list[WorkItem[FuzzingInput]] = []
        for t in range(settings.n_trials):
            rng = trial_rng(KIND, seed, record.key, t)
            order = rng.sample(fresh, len(fresh))
            n_correct = min(settings.n_correct, len(order) - 1)
            correct = [(w, w.firing_mask(threshold), True) for w in order[:n_correct]]
            incorrect: list[tuple[Window, list[bool], bool]] = []
            for w in order[n_correct:]:
                if len(incorrect) == settings.n_incorrect:
                    break
                marks = random_highlight(w.firing_mask(threshold), rng)
                if marks is not None:
                    incorrect.append((w, marks, False))
            if not incorrect:
                continue
            shown = correct + incorrect
            rng.shuffle(shown)
            examples = [shown_example(harvest.decode(list(w.tokens)), marks) for w, marks, _ in shown]
            item_input = FuzzingInput(label=record.label, examples=examples)
            meta: dict[str, Any] = {
                "component": record.key,
                "trial": t,
                "n_shown": len(shown),
                "positives": [i for i, (_, _, ok) in enumerate(shown, start=1) if ok],
                "negatives": [i for i, (_, _, ok) in enumerate(shown, start=1) if not ok],
                "windows": [w.record() for w, _, _ in shown],
                "marked": [[i for i, on in enumerate(marks) if on] for _, marks, _ in shown],
            }
            key = f"{record.key}/trial{t}/{content_digest(item_input.model_dump_json())}"
            trials.append(WorkItem(key, item_input, meta))
        if not trials:
            plan.error = (
                "no window has enough non-firing tokens to carry random marks (the component fires on nearly all)"
            )
            continue
        plan.trial_keys = [item.key for item in trials]
        yield from trials


def run_fuzzing(settings: FuzzingSettings, harvest_dir: Path, labels_dir: Path, out_dir: Path, seed: int) -> Path:
    """Score every label of `labels_dir` on the harvest of `harvest_dir`; writes out_dir/fuzzing.duckdb."""
    with HarvestStore.open(harvest_dir) as harvest, LabelsStore.open(labels_dir) as labels:
        return run_scoring(
            KIND,
            settings,
            fuzzing_task(fuzzing_prompt),
            lambda plans: fuzzing_items(harvest, labels, settings, seed, plans),
            class_outcome("correct_examples"),
            balanced_accuracy_summary(settings.confidence_level),
            out_dir,
            {"prompt_version": PROMPT_VERSION, "seed": seed, "sources": sources_meta(harvest, labels)},
        )
