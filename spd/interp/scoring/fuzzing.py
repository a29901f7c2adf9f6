"""Fuzzing: does a label say *which tokens* the component fires on, not just which texts?

Each trial shows the label and a shuffled mix of the component's own held-out windows: `n_correct` with
every firing token marked (CI above the harvest threshold, at its recorded position) and `n_incorrect`
with the same number of marks (at least one) placed on randomly chosen tokens where the component does
not fire. Unlike the reference, a random mark never lands on a true firing, and correct and random windows
carry comparable numbers of marks. The judge lists the windows whose marks fit the label; the score is
the balanced accuracy of all judged windows pooled over successful trials (chance 0.5).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from spd.harvest.store import HarvestStore
from spd.interp.labels_store import LabelRecord
from spd.interp.schemas import FuzzingInput
from spd.interp.scoring.common import Window, crop_window, random_highlight, trial_rng
from spd.interp.scoring.labelled import (
    ComponentTrials,
    LabelledScorer,
    LabelledScoringSettings,
    held_out_examples,
    label_judging_prompt,
    trial_item,
)
from spd.interp.scoring.render import shown_example
from spd.interp.standard_tasks import fuzzing_task
from spd.interp.tasks import WorkItem

KIND = "fuzzing"
PROMPT_VERSION = "fuzzing-v1"


class FuzzingSettings(LabelledScoringSettings):
    """How many trials per label, and what each shows."""

    n_correct: int = Field(default=5, ge=1, le=50, description="Windows with the true firings marked, per trial.")
    n_incorrect: int = Field(
        default=5, ge=1, le=50, description="Windows with as many marks on non-firing tokens, per trial."
    )


def fuzzing_prompt(item: FuzzingInput) -> str:
    """Label + numbered marked excerpts; asks which excerpts are marked consistently with the label."""
    return label_judging_prompt(
        item.label,
        item.examples,
        f"Below are {len(item.examples)} text excerpts in which the component fires. In each, some tokens are marked "
        "<<like this>>. In some excerpts the marks sit exactly on the tokens where the component fires; in the "
        "others the same number of marks was put on randomly chosen tokens where it does not fire.",
        "Judging by the label, which excerpts have their marks on the tokens where the component fires? Respond "
        'with a JSON object {"correct_examples": [excerpt numbers]}, using [] if none.',
    )


def fuzzing_trials(harvest: HarvestStore, settings: FuzzingSettings, seed: int) -> ComponentTrials:
    """Builds each labelled component's trials: held-out windows, truly or randomly marked."""
    threshold = harvest.ci_threshold

    def component_trials(record: LabelRecord) -> list[WorkItem[FuzzingInput]] | str:
        assert record.label is not None
        fresh = [
            crop_window(e, settings.context_tokens)
            for e in held_out_examples(harvest.examples(record.key, settings.example_kind), record)
        ]
        if len(fresh) < 2:
            return (
                f"{len(fresh)} {settings.example_kind} example(s) left after holding out the "
                f"{len(record.example_ids)} the label was written from; a trial needs 2"
            )
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
            trials.append(
                trial_item(
                    record.key,
                    t,
                    FuzzingInput(label=record.label, examples=examples),
                    [(w, ok) for w, _, ok in shown],
                    marked=[[i for i, on in enumerate(marks) if on] for _, marks, _ in shown],
                )
            )
        return (
            trials or "no window has enough non-firing tokens to carry random marks (the component fires on nearly all)"
        )

    return component_trials


SCORER = LabelledScorer(KIND, PROMPT_VERSION, fuzzing_task(fuzzing_prompt), fuzzing_trials, "correct_examples")


def run_fuzzing(settings: FuzzingSettings, harvest_dir: Path, labels_dir: Path, out_dir: Path, seed: int) -> Path:
    """Score every label of `labels_dir` on the harvest of `harvest_dir`; writes out_dir/fuzzing.duckdb."""
    return SCORER.run(settings, harvest_dir, labels_dir, out_dir, seed)
