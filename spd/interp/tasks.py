"""Tasks and work items: what is asked, independent of who answers.

A `WorkItem` carries a key and a structured input (a pydantic model such as `LabelInput`), not a prompt.
Its `Task` says how to turn that input into a prompt for an LLM (`render_prompt`, called only when the
request is about to go out, so a million-component run never holds a million prompts), which pydantic
model the answer must validate against, an optional semantic check of the answer against the input
(e.g. example numbers in range), and how the offline `heuristic` provider answers the same input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from spd.interp.errors import InvalidOutputError
from spd.interp.results import storable

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


@dataclass(frozen=True)
class WorkItem(Generic[In]):
    """One question: `key` names it in the results (unique per task and journal), `input` holds its data.

    `meta` (JSON-serialisable) is copied to the result row's `extra`: e.g. which activation examples a
    label was built from, so that scorers can hold them out.
    """

    key: str
    input: In
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task(Generic[In, Out]):
    """How one kind of question is asked and checked (label, detection, fuzzing, intruder, ...)."""

    name: str
    output_model: type[Out]
    render_prompt: Callable[[In], str]
    heuristic: Callable[[In], Out] | None = None
    check: Callable[[In, Out], None] | None = None
    """Raise ValueError when an answer is well-formed but unusable for this input; it is then retried."""

    def json_schema(self) -> dict[str, Any]:
        return self.output_model.model_json_schema()

    def parse(self, item_input: In, text: str) -> Out:
        """The validated answer in `text`, or `InvalidOutputError` saying what was wrong."""
        try:
            # A JSON escape such as "\\ud800" decodes to a lone surrogate, which no UTF-8 store can hold.
            data = storable(json.loads(strip_code_fence(text)))
        except json.JSONDecodeError as e:
            raise InvalidOutputError(f"not valid JSON: {e}", kind="invalid_json") from None
        try:
            output = self.output_model.model_validate(data)
        except ValidationError as e:
            summary = "; ".join(f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors())
            raise InvalidOutputError(
                f"fails the {self.output_model.__name__} schema: {summary}", kind="invalid_schema"
            ) from None
        if self.check is not None:
            try:
                self.check(item_input, output)
            except ValueError as e:
                raise InvalidOutputError(f"unusable answer: {e}", kind="invalid_answer") from None
        return output


_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def strip_code_fence(text: str) -> str:
    """Models asked for JSON sometimes wrap it in a ```json fence; accept that, nothing looser."""
    match = _FENCE.match(text)
    return match.group(1) if match else text


def json_instructions(output_model: type[BaseModel]) -> str:
    """A prompt paragraph asking for exactly the output schema (for providers without schema enforcement)."""
    schema = json.dumps(output_model.model_json_schema(), separators=(",", ":"))
    return f"Respond with a single JSON object, and nothing else, that matches this JSON schema:\n{schema}"
