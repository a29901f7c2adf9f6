"""The report's module overview: per decomposed module, how its components fire and score.

One row per module (the harvest's layers, else the modules the labels and scores name): components and alive
components, a histogram of log10 firing density (components that never fired counted apart), CI-L0 at the final
evaluation for each threshold the decomposition logged, how many components are labelled, and per scorer the
number scored, the mean and a histogram of scores over [0, 1]. Plain numbers: the page draws the bars.
"""

from __future__ import annotations

import math
from typing import Any

DENSITY_BINS = [-7.0 + 0.5 * i for i in range(15)]  # log10 density edges: < 1e-7 in the first bin, 1 in the last
SCORE_BINS = 10


def density_histogram(densities: list[float | None]) -> dict[str, Any]:
    """{'edges': log10 edges, 'counts': components per bin, 'dead': never fired}; a density at or beyond an edge
    goes to the bin above it, below the first edge to the first bin."""
    counts = [0] * (len(DENSITY_BINS) - 1)
    dead = 0
    for d in densities:
        if not d:
            dead += 1
            continue
        x = math.log10(d)
        i = sum(1 for e in DENSITY_BINS[1:-1] if x >= e)
        counts[i] += 1
    return {"edges": DENSITY_BINS, "counts": counts, "dead": dead}


def score_histogram(values: list[float]) -> dict[str, Any]:
    """{'n', 'mean', 'counts'} of scores in [0, 1] over SCORE_BINS equal bins (1.0 in the last)."""
    counts = [0] * SCORE_BINS
    for v in values:
        counts[min(SCORE_BINS - 1, max(0, int(v * SCORE_BINS)))] += 1
    return {"n": len(values), "mean": sum(values) / len(values) if values else None, "counts": counts}


def module_overview(
    summaries: list[dict[str, Any]],
    details: dict[str, dict[str, Any]],
    l0: dict[str, dict[str, float]],
    scorers: list[str],
) -> list[dict[str, Any]]:
    """One entry per module, in the harvest's order (then any other module a detail names)."""
    densities: dict[str, list[float | None]] = {}
    for s in summaries:
        densities.setdefault(s["layer"], []).append(s["density"])
    by_module: dict[str, list[dict[str, Any]]] = {module: [] for module in densities}
    for d in details.values():  # one pass over the components, not one per module
        by_module.setdefault(d["module"], []).append(d)
    modules: list[dict[str, Any]] = []
    for module, mine in by_module.items():
        scores: dict[str, list[float]] = {name: [] for name in scorers}
        for d in mine:
            for name, s in (d.get("scores") or {}).items():
                if name in scores and s and s.get("score") is not None:
                    scores[name].append(float(s["score"]))
        entry = dict(
            module=module,
            n_components=len(densities.get(module, [])) or None,
            n_alive=len(mine),
            density=density_histogram(densities.get(module, [])),
            l0={threshold: values[module] for threshold, values in sorted(l0.items()) if module in values},
            n_labelled=sum(1 for d in mine if (d.get("label") or {}).get("label")),
            scores={name: score_histogram(values) for name, values in scores.items()},
        )
        modules.append(entry)
    return modules
