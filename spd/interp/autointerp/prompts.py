"""The two prompt strategies, compact_skeptical and dual_view, as plain functions of a component's evidence.

compact_skeptical asks what the component responds to, in a few words, and pushes hard towards 'unclear'
unless specific tokens or a tight pattern stand out. dual_view asks for its function: what makes it fire
(input side) and what the model predicts where it fires (output side), with the examples shown twice (the
firing tokens, then the tokens that follow them). Both end with the answer format; reasoning comes first in
the answer so the model argues before it labels.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from spd.interp.autointerp.config import AutointerpSettings
from spd.interp.autointerp.evidence import (
    N_INPUT_PMI,
    N_INPUT_PRECISION,
    N_INPUT_RECALL,
    N_OUTPUT_PMI,
    N_OUTPUT_PRECISION,
    ComponentEvidence,
)
from spd.interp.schemas import ActivationExample, LabelOutput, TokenStat
from spd.interp.tasks import json_instructions

_CONTROL = str.maketrans({"\n": "↵", "\t": "⇥", "\r": "⏎", "\x00": "␀"})
OPEN, CLOSE = "<<", ">>"


def display_token(token: str) -> str:
    """A token as printed in a prompt: control characters made visible, nothing else changed."""
    return token.translate(_CONTROL)


def delimit(tokens: list[str], active: list[bool]) -> str:
    """The window's text with each run of marked tokens inside << >>; a run's leading spaces stay outside,
    so ' over the' marked reads ' <<over the>>'."""
    out: list[str] = []
    in_run = False
    for token, on in zip(tokens, active, strict=True):
        text = display_token(token)
        if on and not in_run:
            stripped = text.lstrip(" ")
            out.append(text[: len(text) - len(stripped)] + OPEN + stripped)
            in_run = True
        elif not on and in_run:
            out.append(CLOSE + text)
            in_run = False
        else:
            out.append(text)
    if in_run:
        out.append(CLOSE)
    return "".join(out)


def shifted(example: ActivationExample) -> list[bool]:
    """Marks moved one token right: the token after each firing (a firing on the last token has none shown)."""
    return [False, *example.active[:-1]]


def firing_rate(density: float | None) -> str:
    if not density:
        return "extremely rare"
    return f"{density * 100:.2f}% of tokens, about 1 in {max(1, round(1 / density)):,}"


def _token_list(stats: list[TokenStat], limit: int, fmt: Callable[[float], str]) -> list[str]:
    if not stats:
        return ["- (none)"]
    return [f"- {json.dumps(display_token(s.token), ensure_ascii=False)}: {fmt(s.value)}" for s in stats[:limit]]


def _percent(value: float) -> str:
    return f"{value * 100:.0f}%"


def _nats(value: float) -> str:
    return f"{value:.2f}"


def _context(item: ComponentEvidence, settings: AutointerpSettings) -> list[str]:
    lines = ["## Context"]
    if settings.model_description:
        lines.append(f"- Model: {settings.model_description}")
    if settings.dataset_description:
        lines.append(f"- Data: {settings.dataset_description}")
    lines.append(f"- Location: {item.location} (module `{item.layer}`)")
    lines.append(f"- Fires on {firing_rate(item.firing_density)} ({item.n_firings:,} firings in the sample)")
    return lines


def _examples(examples: list[ActivationExample], marks: Callable[[ActivationExample], list[bool]]) -> list[str]:
    return [f"{i}. {delimit(ex.tokens, marks(ex))}" for i, ex in enumerate(examples, start=1)]


def _answer_format(settings: AutointerpSettings) -> list[str]:
    lines = [
        "## Answer",
        'Reply with one JSON object: "reasoning" (the evidence you used, written first), "label" and '
        '"confidence" ("low", "medium" or "high").',
    ]
    if settings.llm.structured_output != "json_schema":
        lines.append(json_instructions(LabelOutput))
    return lines


def _forbidden(settings: AutointerpSettings) -> str:
    words = ", ".join(settings.forbidden_words) if settings.forbidden_words else "(none)"
    return f"Do not use these words: {words}."


def compact_skeptical(item: ComponentEvidence, settings: AutointerpSettings) -> str:
    """A terse prompt for a short, specific label; 'unclear' is the expected answer for weak evidence."""
    lines = ["Label one component of a neural network.", ""]
    if settings.include_spd_context:
        lines += [
            "The network was decomposed into components, each a rank-one slice of one weight matrix. At every "
            "token a component has a causal importance (CI) between 0 and 1: near 1, the network needs it "
            "there; near 0, it can be removed without changing the output. The component *fires* where its CI "
            f"exceeds {item.ci_threshold:g}.",
            "",
        ]
    lines += _context(item, settings)
    lines += ["", "## Current token where it fires"]
    lines += ["Most frequent (share of all its firings):"]
    lines += _token_list(item.input_tokens, N_INPUT_RECALL, _percent)
    lines += ["Most selective (share of that token's occurrences on which it fires):"]
    lines += _token_list(item.input_precision, N_INPUT_PRECISION, _percent)
    if settings.include_pmi:
        lines += ["Most over-represented (PMI in nats):"]
        lines += _token_list(item.input_pmi, N_INPUT_PMI, _nats)
    lines += ["", "## Tokens the model predicts where it fires"]
    lines += ["Most selective (share of that token's predictions made where it fires):"]
    lines += _token_list(item.output_precision, N_OUTPUT_PRECISION, _percent)
    if settings.include_pmi:
        lines += ["Most over-represented (PMI in nats):"]
        lines += _token_list(item.output_pmi, 6, _nats)
    lines += ["", f"## Examples (tokens where it fires are inside {OPEN} {CLOSE})"]
    lines += _examples(item.examples, lambda ex: list(ex.active))
    lines += [
        "",
        "## Task",
        f"Give a label of 2 to {settings.max_words} words for what this component detects. Be skeptical: "
        "name only what the evidence clearly supports. A good label names specific tokens or a tight "
        'grammatical pattern. If the firings are varied, abstract or weak, the label is "unclear".',
        f"- {_forbidden(settings)}",
        "- Lowercase only.",
        "- Confidence: high when one pattern explains nearly every example; medium when it explains most; "
        "low otherwise.",
        '- Good labels: "\'ing\' endings", "\'and\' joining clauses", "he / his / him", '
        '"full stop before a name", "unclear".',
        '- Bad labels: "various words and punctuation", "nouns and verbs", "tokens near commas".',
        "",
    ]
    lines += _answer_format(settings)
    return "\n".join(lines)


def dual_view(item: ComponentEvidence, settings: AutointerpSettings) -> str:
    """A prompt for the component's function: what makes it fire and what the model then predicts."""
    lines = [
        "Describe what one component of a neural network does.",
        "",
        "A component is a rank-one slice of one weight matrix. It has an input side (the direction it reads: "
        "what makes it fire) and an output side (the direction it writes: which tokens the model then tends "
        "to predict). The two sides often differ; describe the one the evidence supports best, or both.",
        "Read the evidence critically: for components that fire often, the statistics largely reflect how "
        "common tokens are, and the examples are a random sample plus a few of the strongest firings.",
        "",
    ]
    lines += _context(item, settings)
    notes = _position_note(item) + _density_note(item.firing_density)
    if notes:
        lines.append(f"- Note: {' '.join(notes)}")
    lines += ["", "## Output side: tokens the model predicts where it fires"]
    if settings.include_pmi:
        lines += [
            "Most over-represented (PMI in nats; 1 means about 3 times more likely than usual, 2 about 7 times, "
            "3 about 20 times):"
        ]
        lines += _token_list(item.output_pmi, N_OUTPUT_PMI, _nats)
    lines += ["Most selective (share of that token's predictions made where it fires):"]
    lines += _token_list(item.output_precision, N_OUTPUT_PRECISION, _percent)
    lines += ["", "## Input side: tokens on which it fires"]
    if settings.include_pmi:
        lines += ["Most over-represented (PMI in nats):"]
        lines += _token_list(item.input_pmi, N_INPUT_PMI, _nats)
    lines += ["Most frequent (share of all its firings):"]
    lines += _token_list(item.input_tokens, N_INPUT_RECALL, _percent)
    lines += ["Most selective (share of that token's occurrences on which it fires):"]
    lines += _token_list(item.input_precision, N_INPUT_PRECISION, _percent)
    lines += ["", f"## Examples: where it fires (inside {OPEN} {CLOSE})"]
    lines += _examples(item.examples, lambda ex: list(ex.active))
    lines += ["", f"## The same examples: the token right after each firing (inside {OPEN} {CLOSE})"]
    lines += _examples(item.examples, shifted)
    lines += [
        "",
        "## Task",
        f"Give a label of at most {settings.max_words} words for this component's function. Examples of the "
        'style: "completes word stems with suffixes", "predicts a closing quotation mark", "plural noun after '
        'a number", "fires on names, predicts a verb", "unclear".',
        'Say "unclear" when the evidence is weak or points in many directions.',
        f"{_forbidden(settings)} Lowercase only.",
        "Confidence: high when one description fits nearly every example; medium when it fits most; low otherwise.",
        "",
    ]
    lines += _answer_format(settings)
    return "\n".join(lines)


def _position_note(item: ComponentEvidence) -> list[str]:
    if item.block is None or item.n_blocks is None:
        return []
    from_end = item.n_blocks - 1 - item.block
    if from_end <= 0:
        return ["It is in the last block, so what it writes reaches the predictions directly."]
    plural = "s" if from_end > 1 else ""
    return [f"It is {from_end} block{plural} before the last, so its effect on predictions is indirect."]


def _density_note(density: float | None) -> list[str]:
    if density is None:
        return []
    if density > 0.15:
        return ["It fires very often: expect a broad bias rather than a single token."]
    if density < 0.005:
        return ["It fires rarely: it is likely specific."]
    return []


STRATEGIES: dict[str, Callable[[ComponentEvidence, AutointerpSettings], str]] = {
    "compact_skeptical": compact_skeptical,
    "dual_view": dual_view,
}


def prompt_renderer(settings: AutointerpSettings) -> Callable[[ComponentEvidence], str]:
    """The `render_prompt` of the label task for these settings."""
    strategy = STRATEGIES[settings.strategy]

    def render(item: ComponentEvidence) -> str:
        return strategy(item, settings)

    return render
