"""The `intruder` stage: an LLM picks the odd example out among a component's examples; needs no labels.

Thin: `spd.interp.scoring.run_intruder` reads the harvest store (read-only), asks through the LLM layer's
journal in out/llm/ (answers saved as they arrive; a rerun asks only for what is missing, and a same-key
`rerun` of the finished stage keeps the journal: `kept_on_redo`) and writes
out/intruder.duckdb. Intruders come from components of matched firing density (relative tolerance or
density quantile, checked for every donor). A missing API key fails when the pipeline file is loaded.
docs/scoring.md describes the method and the store.
"""

from __future__ import annotations

from spd.interp.results import charged_usd
from spd.interp.scoring.intruder import IntruderSettings, run_intruder
from spd.interp.scoring.runner import JOURNAL_DIR
from stages.base import StageConfig, StageContext, StageSpec


class IntruderConfig(IntruderSettings, StageConfig):
    """Configuration of the intruder stage: the intruder settings (spd.interp.scoring.IntruderSettings)."""


def run_task(config: IntruderConfig, ctx: StageContext, index: int) -> None:
    """Run every trial; resumes from out/llm/ when an earlier attempt was killed."""
    run_intruder(config, ctx.upstream("harvest"), ctx.out_dir, seed=ctx.seed)


STAGE = StageSpec(
    name="intruder",
    config_type=IntruderConfig,
    upstreams=("harvest",),
    run_task=run_task,
    kept_on_redo=(JOURNAL_DIR,),
    spend_usd=charged_usd,
    description="LLM picks the odd example out among a component's examples; needs no labels.",
)
