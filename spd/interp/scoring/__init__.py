"""Scoring labels and components with an LLM judge: detection, fuzzing (labels) and the intruder eval (no labels).

    run_detection(settings, harvest_dir, labels_dir, out_dir, seed)   -> out_dir/detection.duckdb
    run_fuzzing(settings, harvest_dir, labels_dir, out_dir, seed)     -> out_dir/fuzzing.duckdb
    run_intruder(settings, harvest_dir, out_dir, seed)                -> out_dir/intruder.duckdb
    ScoreStore.open(path)                                             read-only access to any of them

Module map: common (settings, windows, seeds, metrics), render (what a judge reads), negatives (certified
true negatives), labelled (what detection and fuzzing share), runner (plan -> LLM journal -> store), store
(the score stores), detection, fuzzing, intruder. The harvest and labels stores are only ever opened
read-only. docs/scoring.md describes the method, the store and the figures.
"""

from spd.interp.scoring.detection import DetectionSettings, run_detection
from spd.interp.scoring.fuzzing import FuzzingSettings, run_fuzzing
from spd.interp.scoring.intruder import DensityMatch, IntruderSettings, run_intruder
from spd.interp.scoring.store import ScoreRecord, ScoreStore, TrialRecord, store_file

__all__ = [
    "DensityMatch",
    "DetectionSettings",
    "FuzzingSettings",
    "IntruderSettings",
    "ScoreRecord",
    "ScoreStore",
    "TrialRecord",
    "run_detection",
    "run_fuzzing",
    "run_intruder",
    "store_file",
]
