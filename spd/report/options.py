"""How much of each component the report embeds: the knobs that trade page size against detail."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReportOptions(BaseModel):
    """What the report embeds per component. The defaults keep a 10,000-component page near 10 MB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_examples: int = Field(5, ge=0, le=100, description="Top-activation examples shown per component.")
    random_examples: int = Field(5, ge=0, le=100, description="Uniformly sampled examples shown per component.")
    token_stats: int = Field(6, ge=0, le=100, description="Input and output tokens listed per component (by PMI).")
    attributions: int = Field(
        6, ge=0, le=100, description="Sources and targets listed per component (largest |attribution|)."
    )
    min_firings: int = Field(
        1, ge=1, description="A component is alive (gets a table row) when it fired at least this many times."
    )
    chunk_size: int = Field(
        200,
        ge=1,
        description="Components per compressed detail chunk: opening a component decompresses only its chunk.",
    )
