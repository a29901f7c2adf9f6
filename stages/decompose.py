"""The `decompose` stage: train an SPD decomposition of a target model (or point at an existing checkpoint).

Its edges are fixed here; its work arrives with issue #5. Until then the registry reports it
as unavailable and a pipeline that configures it is rejected before anything is submitted.
"""

from stages.base import StageConfig, StageSpec


class DecomposeConfig(StageConfig):
    """Configuration of the decompose stage."""


STAGE = StageSpec(
    name="decompose",
    config_type=DecomposeConfig,
    upstreams=(),
    description="Train an SPD decomposition of a target model (or point at an existing checkpoint).",
    unavailable_reason="not implemented yet (issue #5)",
)
