"""How much of each component the report embeds: the knobs that trade page size against detail."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReportOptions(BaseModel):
    """What the report embeds per component (the panels load their data on demand, so the page itself stays small)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_examples: int = Field(
        100, ge=0, le=100, description="Top-activation examples embedded per component (all the harvest kept, to 100)."
    )
    random_examples: int = Field(
        100,
        ge=0,
        le=100,
        description="Uniformly sampled examples embedded per component (all the harvest kept, to 100): the page "
        "groups them into activation quantile bands and draws the activation and CI histograms from them.",
    )
    token_stats: int = Field(6, ge=0, le=100, description="Input and output tokens listed per component (by PMI).")
    pmi_min_count: int = Field(
        5,
        ge=1,
        description="Token statistics list only tokens seen at least this many times with the component: ranked by "
        "PMI alone, tokens met once or twice come first.",
    )
    logit_effects: int = Field(
        6, ge=0, le=100, description="Tokens listed per direction of a residual-stream writer's logit effect (0: off)."
    )
    cofiring: int = Field(
        6, ge=0, le=100, description="Nearest components by co-firing (Jaccard) listed per component."
    )
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
