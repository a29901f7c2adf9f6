"""The `intruder` stage: lLM picks the odd example out among a component's examples; needs no labels.

Its edges are fixed here; its work arrives with issue #10. Until then the registry reports it
as unavailable and a pipeline that configures it is rejected before anything is submitted.
"""

from stages.base import StageConfig, StageSpec


class IntruderConfig(StageConfig):
    """Configuration of the intruder stage."""


STAGE = StageSpec(
    name="intruder",
    config_type=IntruderConfig,
    upstreams=("harvest",),
    description="LLM picks the odd example out among a component's examples; needs no labels.",
    unavailable_reason="not implemented yet (issue #10)",
)
