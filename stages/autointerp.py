"""The `autointerp` stage: one LLM call per alive component: label, confidence, reasoning.

Its edges are fixed here; its work arrives with issue #9. Until then the registry reports it
as unavailable and a pipeline that configures it is rejected before anything is submitted.
"""

from stages.base import StageConfig, StageSpec


class AutointerpConfig(StageConfig):
    """Configuration of the autointerp stage."""


STAGE = StageSpec(
    name="autointerp",
    config_type=AutointerpConfig,
    upstreams=("harvest",),
    description="One LLM call per alive component: label, confidence, reasoning.",
    unavailable_reason="not implemented yet (issue #9)",
)
