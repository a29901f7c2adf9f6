"""Turning windows into what a judge reads: token texts, <<marked>> runs, numbered excerpts.

Prompts receive `ActivationExample`s of spd.interp.schemas (token strings + marks), so the heuristic
provider judges exactly what an LLM would be shown. Control characters are made visible (a newline token
would otherwise break the excerpt layout), and a run of marked tokens is wrapped in one pair of
delimiters with its leading whitespace outside: " over the" -> " <<over the>>".
"""

from __future__ import annotations

from collections.abc import Sequence

from spd.interp.schemas import ActivationExample as ShownExample

_VISIBLE = str.maketrans({"\n": "↵", "\t": "⇥", "\r": "⏎", "\x00": "␀"})


def visible(text: str) -> str:
    """Token text with newline, tab, carriage return and NUL shown as symbols."""
    return text.translate(_VISIBLE)


def shown_example(token_texts: Sequence[str], marks: Sequence[bool] | None = None) -> ShownExample:
    """The judge's view of a window: token strings and which of them are marked (none when marks is None)."""
    tokens = [visible(t) for t in token_texts]
    active = list(marks) if marks is not None else [False] * len(tokens)
    return ShownExample(tokens=tokens, active=active)


def delimit(example: ShownExample) -> str:
    """The excerpt as one string, each run of marked tokens wrapped in << >>."""
    out: list[str] = []
    run: list[str] = []

    def close_run() -> None:
        if run:
            text = "".join(run)
            stripped = text.lstrip() or text  # a run of pure whitespace keeps its whitespace inside
            out.append(text[: len(text) - len(stripped)] + "<<" + stripped + ">>")
            run.clear()

    for token, on in zip(example.tokens, example.active, strict=True):
        if on:
            run.append(token)
        else:
            close_run()
            out.append(token)
    close_run()
    return "".join(out)


def numbered_excerpts(examples: Sequence[ShownExample]) -> str:
    """'Excerpt 1: ...' lines, one blank line apart."""
    return "\n\n".join(f"Excerpt {i}: {delimit(ex)}" for i, ex in enumerate(examples, start=1))
