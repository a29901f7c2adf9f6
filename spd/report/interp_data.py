"""What the report takes from the LLM stages: labels (autointerp), scores (detection, fuzzing, intruder) and
what each stage spent.

Labels come through `LabelsStore`, scores through `ScoreStore` (both open DuckDB read_only). A stage still
running has no store yet; its spend so far is read from its results journal (spd.interp.results, the parts
under out/) when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spd.interp.labels_store import LabelsStore
from spd.interp.results import charged_usd
from spd.interp.scoring.store import ScoreStore
from spd.report.numbers import rounded

SCORERS: tuple[str, ...] = ("detection", "fuzzing", "intruder")
# Chance level when a store's rows disagree or it has none: detection and fuzzing report balanced accuracy
# (chance 0.5); the intruder's chance depends on how many examples were shown, so it is left unknown.
DEFAULT_CHANCE: dict[str, float | None] = {"detection": 0.5, "fuzzing": 0.5, "intruder": None}


@dataclass
class LabelsData:
    available: bool
    reason: str | None = None
    path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    """key -> label, confidence, reasoning, provider, model, error."""
    cost_usd: float | None = None


@dataclass
class ScoresData:
    """One scorer's per-component scores: key -> {score, n_trials(_ok/_failed), ci_low, ci_high, chance, error}."""

    scorer: str
    available: bool
    reason: str | None = None
    path: str | None = None
    chance: float | None = None
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    cost_usd: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def read_labels(out_dir: Path | None) -> LabelsData:
    """Read the labels store under `out_dir`; a missing store is reported, never raised."""
    if out_dir is None:
        return LabelsData(available=False, reason="not part of this pipeline")
    try:
        store = LabelsStore.open(out_dir)
    except FileNotFoundError:
        return LabelsData(available=False, reason="no labels store yet", cost_usd=charged_usd(out_dir))
    with store:
        records = store.labels()
        meta = store.meta()
        data = LabelsData(available=True, path=str(store.path))
    costs = [r.cost_usd for r in records if r.cost_usd is not None]
    data.cost_usd = sum(costs) if costs else None
    providers = sorted({f"{r.provider}/{r.model}" for r in records})
    data.info = {
        "n_labels": meta.get("n_labels", sum(1 for r in records if r.ok)),
        "n_failed": meta.get("n_failed", sum(1 for r in records if not r.ok)),
        "providers": providers,
        "strategy": meta.get("strategy"),
    }
    for r in records:
        data.labels[r.key] = {
            "label": r.label,
            "confidence": r.confidence,
            "reasoning": r.reasoning,
            "provider": r.provider,
            "model": r.model,
            "error": r.error,
        }
    return data


def read_scores(scorer: str, out_dir: Path | None) -> ScoresData:
    """Read one scorer's store (`ScoreStore`) under `out_dir`; a missing store is reported, never raised."""
    if out_dir is None:
        return ScoresData(scorer, available=False, reason="not part of this pipeline")
    try:
        store = ScoreStore.open(out_dir, kind=scorer) if Path(out_dir).is_dir() else ScoreStore.open(out_dir)
    except FileNotFoundError:
        return ScoresData(scorer, available=False, reason="no scores yet", cost_usd=charged_usd(out_dir))
    with store:
        records = store.scores()
        meta = store.meta()
        data = ScoresData(scorer, available=True, path=str(store.path))
    data.cost_usd = meta.get("cost_usd")
    chances = {r.chance for r in records}
    data.chance = chances.pop() if len(chances) == 1 else DEFAULT_CHANCE.get(scorer)
    for r in records:
        entry: dict[str, Any] = {
            "score": rounded(r.score),
            "n_trials": r.n_trials,
            "n_trials_ok": r.n_trials_ok,
            "n_trials_failed": r.n_trials_failed,
            "chance": rounded(r.chance),
        }
        if r.ci_low is not None and r.ci_high is not None:
            entry["ci_low"], entry["ci_high"] = rounded(r.ci_low), rounded(r.ci_high)
        if r.n_correct is not None:
            entry["n_correct"] = r.n_correct
        if r.error is not None:
            entry["error"] = r.error
        data.scores[r.key] = entry
    valid = [r.score for r in records if r.score is not None]
    data.info = {
        "n_components": len(records),
        "n_scored": len(valid),
        "n_failed": len(records) - len(valid),
        "mean": rounded(sum(valid) / len(valid)) if valid else None,
        "provider": f"{meta.get('provider')}/{meta.get('model')}",
        "prompt_version": meta.get("prompt_version"),
        "n_trials": meta.get("n_trials"),
        "n_trials_ok": meta.get("n_trials_ok"),
    }
    return data
