"""The `harvest` stage: per-component activation statistics and examples over a dataset (array + merge).

Its edges are fixed here; its work arrives with issue #7. Until then the registry reports it
as unavailable and a pipeline that configures it is rejected before anything is submitted.
"""

from stages.base import StageConfig, StageSpec


class HarvestConfig(StageConfig):
    """Configuration of the harvest stage."""


STAGE = StageSpec(
    name="harvest",
    config_type=HarvestConfig,
    upstreams=("decompose",),
    description="Per-component activation statistics and examples over a dataset (array + merge).",
    unavailable_reason="not implemented yet (issue #7)",
)
