"""The `attributions` stage: dataset-averaged gradient x activation attributions between components (array + merge).

Its edges are fixed here; its work arrives with issue #8. Until then the registry reports it
as unavailable and a pipeline that configures it is rejected before anything is submitted.
"""

from stages.base import StageConfig, StageSpec


class AttributionsConfig(StageConfig):
    """Configuration of the attributions stage."""


STAGE = StageSpec(
    name="attributions",
    config_type=AttributionsConfig,
    upstreams=("decompose",),
    optional_upstreams=("harvest",),
    description="Dataset-averaged gradient x activation attributions between components (array + merge).",
    unavailable_reason="not implemented yet (issue #8)",
)
