"""Inputs and answers of the four standard tasks: label, detection, fuzzing, intruder.

Inputs hold what a prompt or the heuristic needs (tokens and which positions are marked), never a
rendered prompt. Answers are strict (`extra="forbid"`, every field required) so the same schema can be
sent as an OpenAI strict `json_schema` and checked client-side. Free text comes before the answer field:
a model that writes its reasoning first has reasoned before answering. Example numbers are 1-based, as
they appear in prompts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActivationExample(_Strict):
    """A token window; `active[i]` marks the positions shown as firing (or to be judged)."""

    tokens: list[str] = Field(description="Token strings of the window, as the tokenizer displays them.")
    active: list[bool] = Field(description="Same length as tokens: True where the position is marked.")

    @model_validator(mode="after")
    def _same_length(self) -> ActivationExample:
        if len(self.tokens) != len(self.active):
            raise ValueError(f"tokens ({len(self.tokens)}) and active ({len(self.active)}) differ in length")
        return self

    def marked_tokens(self) -> list[str]:
        return [tok for tok, on in zip(self.tokens, self.active, strict=True) if on]


class TokenStat(_Strict):
    """A token and one statistic of it (precision, recall, PMI, ...), strongest first in a list."""

    token: str
    value: float


class LabelInput(_Strict):
    """What is known about a component when it is labelled."""

    component_key: str
    firing_density: float | None = Field(default=None, description="Fraction of tokens where it fires.")
    input_tokens: list[TokenStat] = Field(
        default_factory=list, description="Current tokens most associated with firing, strongest first."
    )
    output_tokens: list[TokenStat] = Field(
        default_factory=list, description="Predicted tokens most associated with firing, strongest first."
    )
    examples: list[ActivationExample] = Field(default_factory=list, description="Windows with firings marked.")


class LabelOutput(_Strict):
    reasoning: str = Field(description="Evidence for the label, written before it.")
    label: str = Field(description="A short lowercase label, or 'unclear'.")
    confidence: Literal["low", "medium", "high"]


class DetectionInput(_Strict):
    """A label and examples; in each, the marked token (or the whole window if none is marked) is judged."""

    label: str
    examples: list[ActivationExample]


class DetectionOutput(_Strict):
    activating: list[int] = Field(description="1-based numbers of the examples where the component fires.")


class FuzzingInput(_Strict):
    """A label and examples whose marks are either the true firings or random positions."""

    label: str
    examples: list[ActivationExample]


class FuzzingOutput(_Strict):
    correct_examples: list[int] = Field(description="1-based numbers of the examples whose marks fit the label.")


class IntruderInput(_Strict):
    """Examples of one component plus one intruder from elsewhere; no label."""

    examples: list[ActivationExample]


class IntruderOutput(_Strict):
    intruder: int = Field(description="1-based number of the example that does not belong.")


def check_example_numbers(numbers: list[int], n_examples: int) -> None:
    """ValueError unless every number names a distinct example 1..n_examples."""
    bad = [n for n in numbers if not 1 <= n <= n_examples]
    if bad:
        raise ValueError(f"example numbers {bad} outside 1..{n_examples}")
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"example numbers repeat: {numbers}")
