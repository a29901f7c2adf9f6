"""Detection: does a label tell windows where the component fires from windows where it fires nowhere?

Each trial shows the label and a shuffled mix of `n_activating` windows around held-out firings of the
component and `n_non_activating` true negatives (spd.interp.scoring.negatives: windows of the harvested
stream where it provably fires nowhere). Windows are shown as plain text, nothing marked (the judgement is
per window, as in delphi and SAEBench), each cropped around its recorded firing. The judge lists the
windows where it believes the component fires; the component's score is the balanced accuracy of all its
judged windows pooled over successful trials (chance 0.5), with a confidence interval.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from spd.harvest.store import HarvestStore
from spd.interp.labels_store import LabelRecord
from spd.interp.schemas import DetectionInput
from spd.interp.scoring.common import crop_window, trial_rng
from spd.interp.scoring.labelled import (
    ComponentTrials,
    LabelledScorer,
    LabelledScoringSettings,
    held_out_examples,
    label_judging_prompt,
    trial_item,
)
from spd.interp.scoring.negatives import NegativePool, TrueNegativeSampler
from spd.interp.scoring.render import shown_example
from spd.interp.standard_tasks import detection_task
from spd.interp.tasks import WorkItem

KIND = "detection"
PROMPT_VERSION = "detection-v1"


class DetectionSettings(LabelledScoringSettings):
    """How many trials per label, and what each shows."""

    n_activating: int = Field(
        default=5, ge=1, le=50, description="Windows around held-out firings per trial (fewer if fewer exist)."
    )
    n_non_activating: int = Field(
        default=5, ge=1, le=50, description="True-negative windows per trial (fewer if fewer can be certified)."
    )
    draws_per_negative: int = Field(
        default=30,
        ge=1,
        description="Candidate windows tried per negative wanted before a trial settles for fewer.",
    )
    negative_pool_size: int = Field(
        default=4000,
        ge=10,
        description=(
            "Candidate negative windows drawn once per run, uniformly from all stored example windows of other "
            "components; each component's negatives are the certified ones among its draws from this pool."
        ),
    )


def detection_prompt(item: DetectionInput) -> str:
    """Label + numbered plain excerpts; asks for the numbers of the excerpts where the component fires."""
    return label_judging_prompt(
        item.label,
        item.examples,
        f"Below are {len(item.examples)} text excerpts from the model's training data. In some of them the component "
        "fires on at least one token; in the others it fires on no token at all.",
        "Judging only by the label, in which excerpts does the component fire? Respond with a JSON object "
        '{"activating": [excerpt numbers]}, using [] if it fires in none.',
    )


def detection_trials(harvest: HarvestStore, settings: DetectionSettings, seed: int) -> ComponentTrials:
    """Builds each labelled component's trials: held-out firings mixed with certified true negatives."""
    pool: NegativePool | None = None  # built when the first component needs negatives

    def component_trials(record: LabelRecord) -> list[WorkItem[DetectionInput]] | str:
        nonlocal pool
        assert record.label is not None
        own = {kind: harvest.examples(record.key, kind) for kind in ("uniform", "top")}
        fresh = held_out_examples(own[settings.example_kind], record)
        if not fresh:
            return (
                f"no {settings.example_kind} example left after holding out the {len(record.example_ids)} "
                "the label was written from"
            )
        if pool is None:
            pool = NegativePool(
                harvest, settings.example_kind, settings.negative_pool_size, settings.context_tokens, seed
            )
        sampler = TrueNegativeSampler(
            harvest, record.component, pool, settings.draws_per_negative, [*own["uniform"], *own["top"]]
        )
        trials: list[WorkItem[DetectionInput]] = []
        tried = 0
        for t in range(settings.n_trials):
            rng = trial_rng(KIND, seed, record.key, t)
            positives = [
                crop_window(e, settings.context_tokens)
                for e in rng.sample(fresh, min(settings.n_activating, len(fresh)))
            ]
            negatives, n_tries = sampler.draw(rng, settings.n_non_activating)
            tried += n_tries
            if not negatives:
                continue
            shown = [(w, True) for w in positives] + [(w, False) for w in negatives]
            rng.shuffle(shown)
            examples = [shown_example(harvest.decode(list(w.tokens))) for w, _ in shown]
            trials.append(trial_item(record.key, t, DetectionInput(label=record.label, examples=examples), shown))
        return trials or (
            f"no true negative among {tried} candidate windows (the component fires on "
            f"{len(sampler.fired_tokens)} token types)"
        )

    return component_trials


SCORER = LabelledScorer(KIND, PROMPT_VERSION, detection_task(detection_prompt), detection_trials, "activating")


def run_detection(settings: DetectionSettings, harvest_dir: Path, labels_dir: Path, out_dir: Path, seed: int) -> Path:
    """Score every label of `labels_dir` on the harvest of `harvest_dir`; writes out_dir/detection.duckdb."""
    return SCORER.run(settings, harvest_dir, labels_dir, out_dir, seed)
