"""What the label-judging stages (detection, fuzzing) share: their upstreams, task and kept journal.

Each reads the harvest store and the autointerp labels store (both read-only), asks through the LLM
layer's journal in out/llm/ (answers saved as they arrive; a rerun asks only for what is missing, and a
same-key `rerun` of the finished stage keeps the journal: `kept_on_redo`) and writes out/<stage>.duckdb.
One task: the LLM client runs its requests concurrently inside it. A missing API key fails when the
pipeline file is loaded (ScoringSettings). Each stage module keeps its own config class; this builds the rest
of its StageSpec.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from spd.interp.results import charged_usd
from spd.interp.scoring.runner import JOURNAL_DIR
from stages.base import StageConfig, StageContext, StageSpec

C = TypeVar("C", bound=StageConfig)
Scorer = Callable[[C, Path, Path, Path, int], Path]
"""spd.interp.scoring.run_detection / run_fuzzing: (settings, harvest dir, labels dir, out dir, seed)."""


def labelled_scoring_stage(name: str, config_type: type[C], score: Scorer[C], description: str) -> StageSpec[C]:
    """The StageSpec of a stage that scores every autointerp label with `score`."""

    def run_task(config: C, ctx: StageContext, index: int) -> None:
        """Score every label; resumes from out/llm/ when an earlier attempt was killed."""
        score(config, ctx.upstream("harvest"), ctx.upstream("autointerp"), ctx.out_dir, ctx.seed)

    return StageSpec(
        name=name,
        config_type=config_type,
        upstreams=("harvest", "autointerp"),
        run_task=run_task,
        kept_on_redo=(JOURNAL_DIR,),
        spend_usd=charged_usd,
        description=description,
    )
