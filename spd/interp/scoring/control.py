"""The shuffled-label control: score true labels and labels moved between components on the same harvest.

A scorer is only informative if wrong labels score near chance while the true ones score above it. This
writes a second labels store in which every label has moved to another component (seeded; no component
keeps its own label text and, with `disjoint`, none gets a label naming any token its own label names,
since near-duplicate components make a moved label a correct one), scores both stores with detection and
fuzzing, and prints the mean balanced accuracies.

    python -m spd.interp.scoring.control <harvest out dir> <labels out dir> <work dir> [--seed 0] [--plain]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from spd.interp.labels_store import LabelRecord, LabelsStore, write_labels_store
from spd.interp.providers.heuristic import label_terms
from spd.interp.scoring.detection import DetectionSettings, run_detection
from spd.interp.scoring.fuzzing import FuzzingSettings, run_fuzzing
from spd.interp.scoring.store import ScoreStore


def shuffled_labels(records: list[LabelRecord], seed: int = 0, disjoint: bool = True) -> list[LabelRecord]:
    """The same rows with their labels reassigned (see the module docstring); failed labels stay put.

    A seeded random maximum matching of rows to other rows' labels (augmenting paths in random order). A
    row that no allowed label can reach (with `disjoint`: every other label shares a named token with its
    own) gets no label, with an error saying so, and is left out of the control's scores.
    """
    rng = random.Random(seed)
    movable = [i for i, r in enumerate(records) if r.label is not None]
    terms = {i: label_terms(records[i].label or "") for i in movable}

    def allowed(i: int, j: int) -> bool:
        return records[i].label != records[j].label and not (disjoint and terms[i] & terms[j])

    owner: dict[int, int] = {}  # label's row -> row it moves to

    def assign(i: int, seen: set[int]) -> bool:
        for j in rng.sample(movable, len(movable)):
            if j in seen or not allowed(i, j):
                continue
            seen.add(j)
            if j not in owner or assign(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in rng.sample(movable, len(movable)):
        assign(i, set())
    source = {i: j for j, i in owner.items()}
    out = list(records)
    for i in movable:
        j = source.get(i)
        if j is None:
            out[i] = replace(
                records[i],
                label=None,
                confidence=None,
                reasoning=None,
                error="control: no other component's label may move here (all share a named token with its own)",
                error_kind="control",
            )
        else:
            out[i] = replace(records[i], label=records[j].label, reasoning=f"control: label of {records[j].key}")
    return out


def mean_score(path: Path) -> dict[str, Any]:
    """Mean score, number of components scored and of components considered in a score store."""
    with ScoreStore.open(path) as store:
        rows = store.scores()
    scored = [r.score for r in rows if r.score is not None]
    return {"mean": statistics.mean(scored) if scored else None, "n_scored": len(scored), "n": len(rows)}


def run_control(
    harvest_dir: Path, labels_dir: Path, work_dir: Path, seed: int = 0, disjoint: bool = True
) -> dict[str, dict[str, Any]]:
    """Detection and fuzzing (default settings, heuristic judge) of the true and of the shuffled labels."""
    work_dir = Path(work_dir)
    with LabelsStore.open(labels_dir) as labels:
        records = labels.labels()
    moved = work_dir / "shuffled_labels"
    moved.mkdir(parents=True, exist_ok=True)
    write_labels_store(moved / "labels.duckdb", shuffled_labels(records, seed, disjoint), {"control_seed": seed})
    results: dict[str, dict[str, Any]] = {}
    quiet = {"progress": False}
    for name, source in (("true", Path(labels_dir)), ("shuffled", moved)):
        det = run_detection(DetectionSettings(llm=quiet), harvest_dir, source, work_dir / f"{name}_detection", seed)
        fuz = run_fuzzing(FuzzingSettings(llm=quiet), harvest_dir, source, work_dir / f"{name}_fuzzing", seed)
        results[name] = {"detection": mean_score(det), "fuzzing": mean_score(fuz)}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("harvest", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plain", action="store_true", help="only forbid a component's own label text")
    args = parser.parse_args(argv)
    print(json.dumps(run_control(args.harvest, args.labels, args.work_dir, args.seed, not args.plain), indent=2))


if __name__ == "__main__":
    main()
