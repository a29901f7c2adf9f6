"""Intruder eval: are a component's examples coherent enough that an odd one out can be spotted? No labels.

Each trial shows `n_real` windows of the component (its firing tokens marked) and one window of a *donor*
component (the donor's firing tokens marked) at a random position; the judge names the intruder. Score =
fraction of successful trials answered correctly, reported with chance = 1 / (n_real + 1) and a Wilson
interval. Everything random (examples, donor, the donor's example, the position) is seeded per component
and trial.

Donors must fire about as often as the component, so that how much of a window is marked gives nothing
away. The reference matched firing densities (~1e-4..1e-2) with an absolute tolerance of 0.05, which
admits nearly every component, i.e. random donors. Here either
- `relative`: |d_donor - d| <= rel_tol * d, or
- `quantile`: the donor's density quantile among all components with examples is within
  `quantile_window` of the component's.
Each rule is written once: `relative` is HarvestStore.density_matched_components (SQL), `quantile` is
DonorIndex.donors; a component's donors are drawn only from the list that rule returns. A component
without any donor inside the tolerance is not scored (its row says so); it never falls back to random donors.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from spd.harvest.schema import ActivationExample, ComponentSummary
from spd.harvest.store import HarvestStore
from spd.interp.schemas import IntruderInput
from spd.interp.scoring.common import (
    ExampleKind,
    ScoringSettings,
    content_digest,
    crop_window,
    fraction_correct,
    trial_rng,
    wilson_interval,
)
from spd.interp.scoring.labelled import sources_meta
from spd.interp.scoring.render import numbered_excerpts, shown_example
from spd.interp.scoring.runner import ComponentPlan, Summarize, run_scoring
from spd.interp.scoring.store import ScoreRecord
from spd.interp.standard_tasks import intruder_task
from spd.interp.tasks import WorkItem

KIND = "intruder"
PROMPT_VERSION = "intruder-v1"
DONOR_CACHE = 1024


class DensityMatch(BaseModel):
    """Which components may donate an intruder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["relative", "quantile"] = Field(
        default="relative",
        description="'relative': |d_donor - d| <= rel_tol * d. 'quantile': density quantiles within quantile_window.",
    )
    rel_tol: float = Field(default=0.25, ge=0, le=10, description="Relative density tolerance (mode 'relative').")
    quantile_window: float = Field(
        default=0.02, gt=0, le=0.5, description="Largest difference of density quantiles (mode 'quantile')."
    )
    exclude_same_layer: bool = Field(default=False, description="Never take a donor from the component's own layer.")


class IntruderSettings(ScoringSettings):
    """Trials per component, examples per trial, and how donors are matched."""

    n_real: int = Field(default=4, ge=2, le=20, description="The component's own windows per trial.")
    n_trials: int = Field(default=10, ge=1, le=100, description="Trials (LLM calls) per component.")
    min_firings: int = Field(default=1, ge=1, description="Score components with at least this many firings.")
    density_match: DensityMatch = Field(default_factory=DensityMatch, description="Donor matching rule.")


class DonorIndex:
    """Components with examples of a kind, and the donors each may draw from under a DensityMatch rule."""

    def __init__(self, harvest: HarvestStore, kind: ExampleKind, match: DensityMatch) -> None:
        self.harvest = harvest
        self.kind = kind
        self.match = match
        count = (lambda s: s.n_examples) if kind == "uniform" else (lambda s: s.n_top_examples)
        self.eligible = {s.component: s for s in harvest.summaries() if count(s) > 0}
        self.n_examples = {c: count(s) for c, s in self.eligible.items()}
        self._sorted = sorted(s.firing_density for s in self.eligible.values())
        # donors' example lists, fetched whole and kept for the most recently used DONOR_CACHE donors
        self._examples = functools.lru_cache(maxsize=DONOR_CACHE)(lambda donor: harvest.examples(donor, kind))

    def quantile(self, density: float) -> float:
        """Mid-rank quantile of a density among the eligible components (ties share one quantile)."""
        n = len(self._sorted)
        if n <= 1:
            return 0.5
        lo, hi = bisect.bisect_left(self._sorted, density), bisect.bisect_right(self._sorted, density)
        return ((lo + hi - 1) / 2) / (n - 1)

    def donors(self, component: ComponentSummary) -> list[ComponentSummary]:
        """Every eligible donor of `component` under the matching rule, in flat order: the only list donors
        are drawn from."""
        match = self.match
        if match.mode == "relative":
            ids = self.harvest.density_matched_components(
                component.component, match.rel_tol, match.exclude_same_layer, self.kind
            )
            return [self.eligible[c] for c in ids]
        q = self.quantile(component.firing_density)
        return [
            s
            for s in self.eligible.values()
            if s.component != component.component
            and not (match.exclude_same_layer and s.layer == component.layer)
            and abs(self.quantile(s.firing_density) - q) <= match.quantile_window + 1e-12
        ]

    def example(self, donor: int, rank: int) -> ActivationExample:
        """A donor's example of rank `rank`."""
        example = self._examples(donor)[rank]
        if example.rank != rank:  # ranks are 0..n-1 in order (HarvestStore.examples); never pick a wrong one
            raise LookupError(f"component {donor}: example at index {rank} has rank {example.rank}")
        return example


def intruder_prompt(item: IntruderInput) -> str:
    """Numbered marked excerpts, one from a different component; asks for the intruder's number."""
    n = len(item.examples)
    return (
        f"Below are {n} text excerpts. In {n - 1} of them the tokens marked <<like this>> are where one and the "
        "same component of a neural network language model fires. One excerpt, the intruder, comes from a "
        "different component: its marks are where that other component fires.\n\n"
        f"{numbered_excerpts(item.examples)}\n\n"
        "Find what the marked tokens of most excerpts have in common, then pick the excerpt that does not fit. "
        f'Respond with a JSON object {{"intruder": number}}, the intruder\'s excerpt number (1-{n}).'
    )


def intruder_items(
    harvest: HarvestStore, settings: IntruderSettings, seed: int, plans: list[ComponentPlan]
) -> Iterator[WorkItem[IntruderInput]]:
    """One item per trial of every component with enough firings; appends each component's plan to `plans`."""
    kind = settings.example_kind
    index = DonorIndex(harvest, kind, settings.density_match)
    threshold = harvest.ci_threshold
    components = harvest.alive_components(min_firings=settings.min_firings)  # densest first
    if settings.limit is not None:
        components = components[: settings.limit]
    for summary in components:
        plan = ComponentPlan(summary.component, summary.key, summary.layer, summary.firing_density)
        plans.append(plan)
        examples = [crop_window(e, settings.context_tokens) for e in harvest.examples(summary.component, kind)]
        if len(examples) < settings.n_real:
            plan.error = f"{len(examples)} {kind} example(s); a trial needs n_real={settings.n_real}"
            continue
        donors = index.donors(summary)
        if not donors:
            plan.error = f"no donor component within the density tolerance ({settings.density_match})"
            continue
        trials: list[WorkItem[IntruderInput]] = []
        for t in range(settings.n_trials):
            rng = trial_rng(KIND, seed, summary.key, t)
            real = rng.sample(examples, settings.n_real)
            donor = rng.choice(donors)
            intruder = crop_window(
                index.example(donor.component, rng.randrange(index.n_examples[donor.component])),
                settings.context_tokens,
            )
            slot = rng.randrange(settings.n_real + 1)
            shown = [*real[:slot], intruder, *real[slot:]]
            item_input = IntruderInput(
                examples=[shown_example(harvest.decode(list(w.tokens)), w.firing_mask(threshold)) for w in shown]
            )
            meta: dict[str, Any] = {
                "component": summary.key,
                "trial": t,
                "n_shown": len(shown),
                "answer": slot + 1,
                "donor": donor.key,
                "donor_density": donor.firing_density,
                "density": summary.firing_density,
                "windows": [w.record() for w in shown],
            }
            key = f"{summary.key}/trial{t}/{content_digest(item_input.model_dump_json())}"
            trials.append(WorkItem(key, item_input, meta))
        plan.trial_keys = [item.key for item in trials]
        yield from trials


def intruder_outcome(answer: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Whether the named example is the intruder; ValueError for a number outside 1..n_shown."""
    predicted, n_shown = int(answer["intruder"]), int(meta["n_shown"])
    if not 1 <= predicted <= n_shown:
        raise ValueError(f"intruder {predicted} outside 1..{n_shown}")
    return {"predicted": predicted, "answer": int(meta["answer"]), "correct": predicted == int(meta["answer"])}


def intruder_summary(n_real: int, confidence_level: float) -> Summarize:
    """Score = fraction of successful trials answered correctly, with a Wilson interval; chance 1/(n_real+1)."""

    def summarize(plan: ComponentPlan, outcomes: list[dict[str, Any]], n_failed: int) -> ScoreRecord:
        n_correct = sum(bool(o["correct"]) for o in outcomes)
        score = fraction_correct(n_correct, len(outcomes))
        interval = wilson_interval(n_correct, len(outcomes), confidence_level)
        return ScoreRecord(
            component=plan.component,
            key=plan.key,
            layer=plan.layer,
            firing_density=plan.firing_density,
            label=None,
            score=score,
            ci_low=interval[0] if interval else None,
            ci_high=interval[1] if interval else None,
            chance=1 / (n_real + 1),
            n_trials=len(plan.trial_keys),
            n_trials_ok=len(outcomes),
            n_trials_failed=n_failed,
            n_correct=n_correct if outcomes else None,
            error=None if score is not None else (plan.error or "no successful trial"),
        )

    return summarize


def run_intruder(settings: IntruderSettings, harvest_dir: Path, out_dir: Path, seed: int) -> Path:
    """Run the intruder eval on the harvest of `harvest_dir`; writes out_dir/intruder.duckdb."""
    with HarvestStore.open(harvest_dir) as harvest:
        return run_scoring(
            KIND,
            settings,
            intruder_task(intruder_prompt),
            lambda plans: intruder_items(harvest, settings, seed, plans),
            intruder_outcome,
            intruder_summary(settings.n_real, settings.confidence_level),
            out_dir,
            {
                "prompt_version": PROMPT_VERSION,
                "seed": seed,
                "chance": 1 / (settings.n_real + 1),
                "sources": sources_meta(harvest, None),
            },
        )
