"""The `autointerp` stage: one LLM call per alive component of the harvest: label, confidence, reasoning.

Thin: a single task runs `spd.interp.autointerp.run_autointerp` on the harvest store, journaling each
answer under out/llm/ as it arrives and building out/labels.duckdb at the end (`spd.interp.labels_store`
reads it). The journal survives a kill (the task reruns into the same out/ and asks only for what has no
label yet) and a same-key `rerun` of the finished stage (`kept_on_redo`), so no answer is paid twice.

The API key is checked when the config is validated: when the pipeline file is loaded by `run` (on the
login node, before anything is submitted) and again in the worker, whose environment must carry the key
too. Fields: `spd.interp.autointerp.AutointerpSettings` (plus `inputs`); docs/autointerp.md.
"""

from __future__ import annotations

from pydantic import model_validator

from spd.interp.autointerp import JOURNAL_DIR, AutointerpSettings, run_autointerp
from spd.interp.keys import require_api_key
from spd.interp.pricing import resolve_price
from spd.interp.results import charged_usd
from stages.base import StageConfig, StageContext, StageSpec


class AutointerpConfig(AutointerpSettings, StageConfig):
    """Configuration of the autointerp stage (the autointerp settings)."""

    @model_validator(mode="after")
    def _check_llm_access(self) -> AutointerpConfig:
        """Fail at load time, naming the variable, when the provider needs a key the environment lacks, or a
        budget is set for a model without a price."""
        require_api_key(self.llm)  # MissingAPIKeyError is a ValueError: reported as a config error
        resolve_price(self.llm)
        return self


def run_task(config: AutointerpConfig, ctx: StageContext, index: int) -> None:
    """Label every selected component (resuming from the journal in out/llm/), then write out/labels.duckdb."""
    run_autointerp(ctx.upstream("harvest"), ctx.out_dir, config, seed=ctx.seed)


STAGE = StageSpec(
    name="autointerp",
    config_type=AutointerpConfig,
    upstreams=("harvest",),
    run_task=run_task,
    description="One LLM call per alive component: label, confidence, reasoning.",
    kept_on_redo=(JOURNAL_DIR,),
    spend_usd=charged_usd,
)
