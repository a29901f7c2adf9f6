"""The four standard tasks, each wired to its answer schema, its answer check and its heuristic.

Prompts are the callers' (autointerp strategies, scorers): each factory takes the function that renders
an input into a prompt, so one task can be answered by any provider and the heuristic alike.
"""

from __future__ import annotations

from collections.abc import Callable

from spd.interp.providers.heuristic import heuristic_detection, heuristic_fuzzing, heuristic_intruder, heuristic_label
from spd.interp.schemas import (
    DetectionInput,
    DetectionOutput,
    FuzzingInput,
    FuzzingOutput,
    IntruderInput,
    IntruderOutput,
    LabelInput,
    LabelOutput,
    check_example_numbers,
)
from spd.interp.tasks import Task


def _check_label(item: LabelInput, answer: LabelOutput) -> None:
    if not answer.label.strip():
        raise ValueError("empty label")


def _check_detection(item: DetectionInput, answer: DetectionOutput) -> None:
    check_example_numbers(answer.activating, len(item.examples))


def _check_fuzzing(item: FuzzingInput, answer: FuzzingOutput) -> None:
    check_example_numbers(answer.correct_examples, len(item.examples))


def _check_intruder(item: IntruderInput, answer: IntruderOutput) -> None:
    check_example_numbers([answer.intruder], len(item.examples))


def label_task(render_prompt: Callable[[LabelInput], str], name: str = "label") -> Task[LabelInput, LabelOutput]:
    return Task(name, LabelOutput, render_prompt, heuristic_label, _check_label)


def detection_task(
    render_prompt: Callable[[DetectionInput], str], name: str = "detection"
) -> Task[DetectionInput, DetectionOutput]:
    return Task(name, DetectionOutput, render_prompt, heuristic_detection, _check_detection)


def fuzzing_task(
    render_prompt: Callable[[FuzzingInput], str], name: str = "fuzzing"
) -> Task[FuzzingInput, FuzzingOutput]:
    return Task(name, FuzzingOutput, render_prompt, heuristic_fuzzing, _check_fuzzing)


def intruder_task(
    render_prompt: Callable[[IntruderInput], str], name: str = "intruder"
) -> Task[IntruderInput, IntruderOutput]:
    return Task(name, IntruderOutput, render_prompt, heuristic_intruder, _check_intruder)
