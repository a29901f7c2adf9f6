"""The `detection` stage: an LLM judge scores each label on activating vs true non-activating windows.

Thin: `spd.interp.scoring.run_detection` reads the harvest store and the autointerp labels store and
writes out/detection.duckdb; stages.labelled_scoring builds the stage around it (shared with fuzzing:
one task, the journal in out/llm/ kept on a same-key rerun). A missing API key fails when the pipeline
file is loaded (ScoringSettings). docs/scoring.md describes the method and the store.
"""

from __future__ import annotations

from spd.interp.scoring.detection import DetectionSettings, run_detection
from stages.base import StageConfig
from stages.labelled_scoring import labelled_scoring_stage


class DetectionConfig(DetectionSettings, StageConfig):
    """Configuration of the detection stage: the detection settings (spd.interp.scoring.DetectionSettings)."""


STAGE = labelled_scoring_stage(
    "detection",
    DetectionConfig,
    run_detection,
    "LLM judge scores each label on activating vs true non-activating windows.",
)
