"""The `detection` stage: an LLM judge scores each label on activating vs true non-activating windows.

Thin: `spd.interp.scoring.run_detection` reads the harvest store and the autointerp labels store (both
read-only), asks through the LLM layer's journal in out/llm/ (answers saved as they arrive; a rerun asks
only for what is missing, and a same-key `rerun` of the finished stage keeps the journal: `kept_on_redo`)
and writes out/detection.duckdb. One task: the LLM client runs its requests
concurrently inside it. A missing API key fails when the pipeline file is loaded (ScoringSettings).
docs/scoring.md describes the method and the store.
"""

from __future__ import annotations

from spd.interp.scoring.detection import DetectionSettings, run_detection
from spd.interp.scoring.runner import JOURNAL_DIR
from stages.base import StageConfig, StageContext, StageSpec


class DetectionConfig(DetectionSettings, StageConfig):
    """Configuration of the detection stage: the detection settings (spd.interp.scoring.DetectionSettings)."""


def run_task(config: DetectionConfig, ctx: StageContext, index: int) -> None:
    """Score every label; resumes from out/llm/ when an earlier attempt was killed."""
    run_detection(config, ctx.upstream("harvest"), ctx.upstream("autointerp"), ctx.out_dir, seed=ctx.seed)


STAGE = StageSpec(
    name="detection",
    config_type=DetectionConfig,
    upstreams=("harvest", "autointerp"),
    run_task=run_task,
    kept_on_redo=(JOURNAL_DIR,),
    description="LLM judge scores each label on activating vs true non-activating windows.",
)
