"""What the autointerp stage does: which components, which prompt strategy, which examples, which LLM.

One frozen pydantic model shared by the stage config (stages/autointerp.py inherits it unchanged) and the
library entry point `run_autointerp`. It holds no secret: the LLM's key comes from the environment.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spd.interp.config import LLMConfig

Strategy = Literal["compact_skeptical", "dual_view"]

DEFAULT_FORBIDDEN_WORDS = ("narrative", "story", "character", "theme", "descriptive", "content", "transition", "scene")
DEFAULT_LABEL_MAX_WORDS: dict[str, int] = {"compact_skeptical": 5, "dual_view": 8}


class AutointerpSettings(BaseModel):
    """Component selection, prompt strategy and example counts of one labelling run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    llm: LLMConfig = Field(
        default_factory=LLMConfig,
        description="Who answers (provider heuristic | openai | anthropic), pacing, retries and budget (docs/llm.md).",
    )
    strategy: Strategy = Field(
        "compact_skeptical",
        description=(
            "Prompt strategy. compact_skeptical: what the component responds to, in 2-5 words, 'unclear' unless "
            "specific tokens or a tight pattern stand out. dual_view: its input side (what makes it fire) and "
            "output side (what the model predicts where it fires), in up to 8 words."
        ),
    )
    min_density: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Alive threshold: only components firing on more than this fraction of tokens are labelled.",
    )
    min_firings: int = Field(
        1, ge=1, description="Only components that fired at least this many times in the harvest are labelled."
    )
    limit: int | None = Field(
        None, ge=1, description="Label at most this many components, the densest first. None: every alive one."
    )
    layers: list[str] | None = Field(
        None, description="Label only components of these decomposed modules (harvest layer names). None: all."
    )
    n_examples: int = Field(
        24,
        ge=0,
        le=200,
        description=(
            "Uniform examples shown: the harvest's uniform reservoir ranks 0..n-1 (a uniform sample of firings). "
            "Scorers hold out the examples a label was written from (labels store example_ids)."
        ),
    )
    n_top_examples: int = Field(
        6, ge=0, le=200, description="Examples with the largest |activation| shown too (duplicates dropped)."
    )
    min_token_count: int = Field(
        2,
        ge=1,
        description="Precision and PMI lists show only tokens seen at least this often at firings (noise floor).",
    )
    label_max_words: int | None = Field(
        None, ge=1, le=30, description="Longest label asked for; None: 5 for compact_skeptical, 8 for dual_view."
    )
    forbidden_words: tuple[str, ...] = Field(
        DEFAULT_FORBIDDEN_WORDS, description="Vague words the label must not use (the prompt lists them)."
    )
    include_pmi: bool = Field(True, description="Show PMI token lists besides recall and precision.")
    include_spd_context: bool = Field(
        True, description="compact_skeptical: explain causal importance (what 'firing' means) in the prompt."
    )
    model_description: str | None = Field(
        None, description="One line about the decomposed model for the prompt, e.g. '2-layer transformer LM'."
    )
    dataset_description: str | None = Field(
        None, description="One line about the harvest data for the prompt, e.g. 'short synthetic children's stories'."
    )
    n_blocks: int | None = Field(
        None,
        ge=1,
        description="Blocks of the model, for 'block i of n' in the prompt; None: not stated (only the block index).",
    )
    seed: int | None = Field(None, description="Seed of the example order in each prompt; None: the stage seed.")

    @model_validator(mode="after")
    def _check(self) -> AutointerpSettings:
        if self.n_examples + self.n_top_examples == 0:
            raise ValueError("n_examples + n_top_examples must be at least 1: a label needs examples")
        return self

    @property
    def max_words(self) -> int:
        return self.label_max_words or DEFAULT_LABEL_MAX_WORDS[self.strategy]
