"""The `fuzzing` stage: an LLM judge scores each label on truly vs randomly marked tokens.

Thin: `spd.interp.scoring.run_fuzzing` reads the harvest store and the autointerp labels store (both
read-only), asks through the LLM layer's journal in out/llm/ (answers saved as they arrive; a rerun asks
only for what is missing, and a same-key `rerun` of the finished stage keeps the journal: `kept_on_redo`)
and writes out/fuzzing.duckdb. One task: the LLM client runs its requests
concurrently inside it. A missing API key fails when the pipeline file is loaded (ScoringSettings).
docs/scoring.md describes the method and the store.
"""

from __future__ import annotations

from spd.interp.scoring.fuzzing import FuzzingSettings, run_fuzzing
from spd.interp.scoring.runner import JOURNAL_DIR
from stages.base import StageConfig, StageContext, StageSpec


class FuzzingConfig(FuzzingSettings, StageConfig):
    """Configuration of the fuzzing stage: the fuzzing settings (spd.interp.scoring.FuzzingSettings)."""


def run_task(config: FuzzingConfig, ctx: StageContext, index: int) -> None:
    """Score every label; resumes from out/llm/ when an earlier attempt was killed."""
    run_fuzzing(config, ctx.upstream("harvest"), ctx.upstream("autointerp"), ctx.out_dir, seed=ctx.seed)


STAGE = StageSpec(
    name="fuzzing",
    config_type=FuzzingConfig,
    upstreams=("harvest", "autointerp"),
    run_task=run_task,
    kept_on_redo=(JOURNAL_DIR,),
    description="LLM judge scores each label on truly vs randomly marked tokens.",
)
