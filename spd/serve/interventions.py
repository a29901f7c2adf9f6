"""Interventions: switch components off (mask 0) or on (mask 1) at one position or at every position, starting
from the CI mask (or from all components on), and compare the predictions with the target's and the base's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Base = Literal["ci", "all"]
"""Where the masks start: each component's own CI (the CI-masked model), or 1 for every component."""


@dataclass(frozen=True)
class Change:
    """Set component `index` of `module` to `on` (mask 1) or off (mask 0) at `position`, or everywhere (None)."""

    module: str
    index: int
    position: int | None
    on: bool


def base_masks(ci: dict[str, Tensor], base: Base) -> dict[str, Tensor]:
    """module -> [T, C] masks before any change."""
    if base == "ci":
        return {m: c.clone() for m, c in ci.items()}
    if base == "all":
        return {m: torch.ones_like(c) for m, c in ci.items()}
    raise ValueError(f"base must be 'ci' or 'all', got {base!r}")


def apply_changes(masks: dict[str, Tensor], changes: list[Change]) -> dict[str, Tensor]:
    """New masks with `changes` applied in order (a later change of the same entry wins)."""
    out = {m: mask.clone() for m, mask in masks.items()}
    for change in changes:
        if change.module not in out:
            raise ValueError(f"{change.module!r} is not a decomposed module (modules: {sorted(out)})")
        mask = out[change.module]
        T, C = mask.shape
        if not 0 <= change.index < C:
            raise ValueError(f"{change.module} has components 0..{C - 1}, not {change.index}")
        if change.position is not None and not 0 <= change.position < T:
            raise ValueError(f"position {change.position} is outside the prompt's {T} tokens")
        rows = slice(None) if change.position is None else change.position
        mask[rows, change.index] = 1.0 if change.on else 0.0
    return out
