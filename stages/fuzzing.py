"""The `fuzzing` stage: an LLM judge scores each label on truly vs randomly marked tokens.

`spd.interp.scoring.run_fuzzing` writes out/fuzzing.duckdb; stages.labelled_scoring builds the stage around it
(inputs, one task, the kept journal). docs/scoring.md describes the method and the store.
"""

from __future__ import annotations

from spd.interp.scoring.fuzzing import FuzzingSettings, run_fuzzing
from stages.base import StageConfig
from stages.labelled_scoring import labelled_scoring_stage


class FuzzingConfig(FuzzingSettings, StageConfig):
    """Configuration of the fuzzing stage: the fuzzing settings (spd.interp.scoring.FuzzingSettings)."""


STAGE = labelled_scoring_stage(
    "fuzzing",
    FuzzingConfig,
    run_fuzzing,
    "LLM judge scores each label on truly vs randomly marked tokens.",
)
