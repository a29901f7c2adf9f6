"""Mask infos and stochastic masks.

A mask info says how one module runs in a masked forward: a per-subcomponent mask, which positions
are routed to the components (others keep the original output), and an optional delta term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from spd.models.config import Sampling as Sampling


@dataclass
class MaskInfo:
    """How one decomposed module runs: mask (... x C), routing ('all' or bool over leading dims), delta."""

    mask: Tensor
    routing: Tensor | Literal["all"] = "all"
    delta: Tensor | None = None
    delta_mask: Tensor | None = None


def sample_sources(like: Tensor, sampling: Sampling) -> Tensor:
    """u ~ U[0, 1) (continuous) or u in {0, 1} uniformly (binomial), same shape as `like`."""
    if sampling == "continuous":
        return torch.rand_like(like)
    if sampling == "binomial":
        return torch.randint(0, 2, like.shape, device=like.device).to(like.dtype)
    raise ValueError(f"unknown sampling {sampling!r}")


def stochastic_mask_infos(
    ci: dict[str, Tensor],
    sampling: Sampling,
    deltas: dict[str, Tensor] | None = None,
    routing: dict[str, Tensor] | None = None,
) -> dict[str, MaskInfo]:
    """m = g + (1 - g) u per (position, subcomponent); delta mask ~ U[0,1) per position when deltas given.

    Gradients flow through g (the reparameterisation that trains the CI functions).
    """
    infos = {}
    for name, g in ci.items():
        mask = g + (1 - g) * sample_sources(g, sampling)
        delta = delta_mask = None
        if deltas is not None:
            delta = deltas[name]
            delta_mask = torch.rand(g.shape[:-1], device=g.device, dtype=g.dtype)
        route = routing[name] if routing is not None else "all"
        infos[name] = MaskInfo(mask=mask, routing=route, delta=delta, delta_mask=delta_mask)
    return infos


def ci_mask_infos(ci: dict[str, Tensor], routing: dict[str, Tensor] | None = None) -> dict[str, MaskInfo]:
    """Deterministic masks m = g, no delta (CI-masked reconstruction); routing None = every position."""
    return {name: MaskInfo(mask=g, routing=routing[name] if routing is not None else "all") for name, g in ci.items()}


def ones_mask_infos(ci: dict[str, Tensor]) -> dict[str, MaskInfo]:
    """All-ones masks, no delta: checks that the subcomponents alone reproduce the target."""
    return {name: MaskInfo(mask=torch.ones_like(g)) for name, g in ci.items()}
