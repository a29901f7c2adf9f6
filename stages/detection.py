"""The `detection` stage: an LLM judge scores each label on activating vs true non-activating windows.

`spd.interp.scoring.run_detection` writes out/detection.duckdb; stages.labelled_scoring builds the stage around it
(inputs, one task, the kept journal). docs/scoring.md describes the method and the store.
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
