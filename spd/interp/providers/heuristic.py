"""The offline baseline: labels from a component's top tokens, judgements by token match.

Transparent on purpose: a label is the few tokens that cover most marked positions, a judge says "fires"
where a marked token appears in the label. It needs no network, costs nothing, is deterministic, and
gives every LLM score a floor to beat. Rows it answers say provider 'heuristic'.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from spd.interp.schemas import (
    ActivationExample,
    DetectionInput,
    DetectionOutput,
    FuzzingInput,
    FuzzingOutput,
    IntruderInput,
    IntruderOutput,
    LabelInput,
    LabelOutput,
)

MAX_LABEL_TOKENS = 3
COVERAGE_FOR_LABEL = 0.8
UNCLEAR = "unclear"

_BPE_SPACE = str.maketrans({"Ġ": " ", "▁": " ", "Ċ": "\n"})


def normalize_token(token: str) -> str:
    """Compare tokens without case, surrounding spaces or BPE space markers; pure whitespace stays as is."""
    text = token.translate(_BPE_SPACE)
    core = text.strip().lower()
    return core if core else text


def _marked(examples: list[ActivationExample]) -> list[str]:
    return [normalize_token(tok) for ex in examples for tok in ex.marked_tokens()]


def _ranked_tokens(item: LabelInput, marked: list[str]) -> list[str]:
    """Candidate tokens, strongest first: the given input-token statistics, else marked-token counts."""
    if item.input_tokens:
        ranked = [normalize_token(stat.token) for stat in item.input_tokens]
    else:
        ranked = [tok for tok, _ in sorted(Counter(marked).items(), key=lambda kv: (-kv[1], kv[0]))]
    return list(dict.fromkeys(tok for tok in ranked if tok))


def _quoted(tokens: list[str]) -> str:
    return " / ".join(json.dumps(tok, ensure_ascii=False) for tok in tokens)


def heuristic_label(item: LabelInput) -> LabelOutput:
    """Label = the fewest top input tokens (at most 3) that cover 80% of marked positions; confidence from
    coverage. When they cover less and output-token statistics are given, the label adds what the component
    predicts (`"a" / "b"; predicts "x" / "y"`): many components are better described by their effect than by
    the tokens they read."""
    marked = _marked(item.examples)
    ranked = _ranked_tokens(item, marked)
    if not ranked:
        return LabelOutput(
            reasoning="heuristic: no marked tokens and no token statistics", label=UNCLEAR, confidence="low"
        )
    chosen = ranked[:MAX_LABEL_TOKENS]
    coverage: float | None = None
    if marked:
        for k in range(1, len(chosen) + 1):
            top = set(chosen[:k])
            coverage = sum(tok in top for tok in marked) / len(marked)
            if coverage >= COVERAGE_FOR_LABEL:
                chosen = chosen[:k]
                break
    predicted = list(dict.fromkeys(t for t in (normalize_token(s.token) for s in item.output_tokens) if t))
    if coverage is not None and coverage < COVERAGE_FOR_LABEL and predicted:
        shown = predicted[:MAX_LABEL_TOKENS]
        return LabelOutput(
            reasoning=(
                f"heuristic: the top input tokens {_quoted(chosen)} cover only {coverage:.0%} of {len(marked)} "
                f"marked positions; the tokens it predicts most specifically are {_quoted(shown)}"
            ),
            label=f"{_quoted(chosen)}; predicts {_quoted(shown)}",
            confidence="medium" if coverage >= 0.5 else "low",
        )
    if coverage is None:
        confidence = "low"
        evidence = "ranked by the given token statistics; no marked examples to check coverage"
    else:
        confidence = "high" if coverage >= COVERAGE_FOR_LABEL else "medium" if coverage >= 0.5 else "low"
        evidence = f"they cover {coverage:.0%} of {len(marked)} marked positions in {len(item.examples)} examples"
    label = _quoted(chosen)
    return LabelOutput(reasoning=f"heuristic: top tokens {label}; {evidence}", label=label, confidence=confidence)


_DOUBLE_QUOTED = re.compile(r'"([^"]+)"')
_SINGLE_QUOTED = re.compile(r"(?<!\w)'([^']+)'(?!\w)")
_SEPARATORS = re.compile(r"[\s/,;]+")


def label_terms(label: str) -> set[str]:
    """Tokens a label names: its quoted strings if it has any, else its words. 'unclear' names none."""
    if label.strip().lower() == UNCLEAR:
        return set()
    quoted = _DOUBLE_QUOTED.findall(label) or _SINGLE_QUOTED.findall(label)
    if quoted:
        return {normalize_token(_unescape(q)) for q in quoted}
    return {normalize_token(word) for word in _SEPARATORS.split(label) if word.strip()}


def _unescape(quoted: str) -> str:
    """Undo the JSON escapes heuristic labels use for whitespace tokens ("\\n"); leave anything else as is."""
    if "\\" not in quoted:
        return quoted
    try:
        return json.loads(f'"{quoted}"')
    except json.JSONDecodeError:
        return quoted


def _judged_tokens(example: ActivationExample) -> list[str]:
    marked = example.marked_tokens()
    return [normalize_token(tok) for tok in (marked or example.tokens)]


def heuristic_detection(item: DetectionInput) -> DetectionOutput:
    """An example 'activates' when a judged token (marked, else any) is one the label names."""
    terms = label_terms(item.label)
    hits = [i + 1 for i, ex in enumerate(item.examples) if terms.intersection(_judged_tokens(ex))]
    return DetectionOutput(activating=hits)


def heuristic_fuzzing(item: FuzzingInput) -> FuzzingOutput:
    """Marks are 'correct' when at least half of the marked tokens are ones the label names."""
    terms = label_terms(item.label)
    correct = []
    for i, ex in enumerate(item.examples):
        marked = [normalize_token(tok) for tok in ex.marked_tokens()]
        if marked and sum(tok in terms for tok in marked) * 2 >= len(marked):
            correct.append(i + 1)
    return FuzzingOutput(correct_examples=correct)


def heuristic_intruder(item: IntruderInput) -> IntruderOutput:
    """The intruder shares marked tokens with the fewest other examples (first such example on ties)."""
    sets = [set(_judged_tokens(ex)) for ex in item.examples]
    overlaps = [sum(1 for j, other in enumerate(sets) if j != i and mine & other) for i, mine in enumerate(sets)]
    return IntruderOutput(intruder=overlaps.index(min(overlaps)) + 1 if overlaps else 1)
