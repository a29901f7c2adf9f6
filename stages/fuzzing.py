"""The `fuzzing` stage: an LLM judge scores each label on truly vs randomly marked tokens.

Thin: `spd.interp.scoring.run_fuzzing` reads the harvest store and the autointerp labels store and
writes out/fuzzing.duckdb; stages.labelled_scoring builds the stage around it (shared with detection:
one task, the journal in out/llm/ kept on a same-key rerun). A missing API key fails when the pipeline
file is loaded (ScoringSettings). docs/scoring.md describes the method and the store.
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
