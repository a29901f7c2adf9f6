"""The `fuzzing` stage: lLM judge scores each label on correctly vs randomly highlighted tokens.

Its edges are fixed here; its work arrives with issue #10. Until then the registry reports it
as unavailable and a pipeline that configures it is rejected before anything is submitted.
"""

from stages.base import StageConfig, StageSpec


class FuzzingConfig(StageConfig):
    """Configuration of the fuzzing stage."""


STAGE = StageSpec(
    name="fuzzing",
    config_type=FuzzingConfig,
    upstreams=("harvest", "autointerp"),
    description="LLM judge scores each label on correctly vs randomly highlighted tokens.",
    unavailable_reason="not implemented yet (issue #10)",
)
