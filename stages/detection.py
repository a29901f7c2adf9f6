"""The `detection` stage: lLM judge scores each label on activating vs non-activating windows.

Its edges are fixed here; its work arrives with issue #10. Until then the registry reports it
as unavailable and a pipeline that configures it is rejected before anything is submitted.
"""

from stages.base import StageConfig, StageSpec


class DetectionConfig(StageConfig):
    """Configuration of the detection stage."""


STAGE = StageSpec(
    name="detection",
    config_type=DetectionConfig,
    upstreams=("harvest", "autointerp"),
    description="LLM judge scores each label on activating vs non-activating windows.",
    unavailable_reason="not implemented yet (issue #10)",
)
