"""Adversarial sources and the PGD ascent shared by every PGD loss.

A module's sources s ∈ [0, 1] have width C (+1 when the delta component is on: the last entry is the δ mask).
They give masks g + (1 - g) s[..., :C] (the reference's form, not max(g, s)) and δ mask s[..., C]. A PGD loss
re-initialises its sources on every call, takes `n_steps` signed ascent steps with the CIs and deltas held
fixed, and returns the loss of one more forward in which the sources are constants, so the outer gradient
reaches the CI functions and the components only. `PGDSettings.sum_and_count` is that whole recipe for a loss
given as (sum, count), which the output-divergence and hidden-activation PGD losses both are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from spd.models.masks import MaskInfo

PGDInit = Literal["random", "ones", "zeroes"]
MaskScope = Literal["unique_per_datapoint", "shared_across_batch"]
Objective = Callable[[dict[str, Tensor], dict[str, Tensor] | None, dict[str, Tensor]], Tensor]
"""objective(ci, deltas, sources) -> the loss the ascent maximises."""
SumAndCount = Callable[[dict[str, Tensor], dict[str, Tensor] | None, dict[str, Tensor]], tuple[Tensor, int]]
"""objective(ci, deltas, sources) -> (sum of per-element losses, their count): the loss is sum / count."""


def source_mask_infos(
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    sources: dict[str, Tensor],
    routing: dict[str, Tensor] | None = None,
) -> dict[str, MaskInfo]:
    """Mask infos of the modules in `ci` from sources broadcastable to (*leading, C'); δ only when deltas given."""
    infos = {}
    for path, g in ci.items():
        s = sources[path].expand(*g.shape[:-1], sources[path].shape[-1])
        C = g.shape[-1]
        delta = deltas[path] if deltas is not None else None
        infos[path] = MaskInfo(
            mask=g + (1 - g) * s[..., :C],
            routing=routing[path] if routing is not None else "all",
            delta=delta,
            delta_mask=s[..., C] if delta is not None else None,
        )
    return infos


def init_sources(ci: dict[str, Tensor], with_delta: bool, init: PGDInit, mask_scope: MaskScope) -> dict[str, Tensor]:
    """Fresh sources per module: one per position (unique_per_datapoint) or one for the batch (shared)."""
    sources = {}
    for path, g in ci.items():
        width = g.shape[-1] + int(with_delta)
        lead = tuple(g.shape[:-1]) if mask_scope == "unique_per_datapoint" else (1,) * (g.dim() - 1)
        if init == "random":
            s = torch.rand((*lead, width), device=g.device, dtype=g.dtype)
        elif init == "ones":
            s = torch.ones((*lead, width), device=g.device, dtype=g.dtype)
        elif init == "zeroes":
            s = torch.zeros((*lead, width), device=g.device, dtype=g.dtype)
        else:
            raise ValueError(f"unknown PGD init {init!r}")
        sources[path] = s
    return sources


def pgd_sources(
    objective: Objective,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    init: PGDInit,
    step_size: float,
    n_steps: int,
    mask_scope: MaskScope,
) -> dict[str, Tensor]:
    """Maximise objective(ci, deltas, sources) over sources: s <- clamp(s + step·sign(∂L/∂s), 0, 1), n_steps times.

    CIs and deltas are detached inside the ascent; the returned sources are detached constants.
    """
    sources = {k: v.requires_grad_(True) for k, v in init_sources(ci, deltas is not None, init, mask_scope).items()}
    ci_d = {k: v.detach() for k, v in ci.items()}
    deltas_d = {k: v.detach() for k, v in deltas.items()} if deltas is not None else None
    for _ in range(n_steps):
        with torch.enable_grad():  # the ascent needs source gradients even inside a no-grad evaluation
            loss = objective(ci_d, deltas_d, sources)
            grads = torch.autograd.grad(loss, list(sources.values()))
        with torch.no_grad():
            for s, g in zip(sources.values(), grads, strict=True):
                s.add_(step_size * g.sign()).clamp_(0.0, 1.0)
    return {k: v.detach() for k, v in sources.items()}


@dataclass(frozen=True)
class PGDSettings:
    """The knobs of a fresh-each-call PGD, as every PGD loss takes them."""

    init: PGDInit = "random"
    step_size: float = 1.0
    n_steps: int = 1
    mask_scope: MaskScope = "shared_across_batch"

    def sum_and_count(
        self, objective: SumAndCount, ci: dict[str, Tensor], deltas: dict[str, Tensor] | None
    ) -> tuple[Tensor, int]:
        """Ascend on sum / count from fresh sources, then return (sum, count) at the sources found.

        (sum, count) rather than the mean, so a layerwise loss can pool several PGDs: Σ sums / Σ counts.
        """

        def mean(c: dict[str, Tensor], d: dict[str, Tensor] | None, src: dict[str, Tensor]) -> Tensor:
            total, n = objective(c, d, src)
            return total / n

        sources = pgd_sources(mean, ci, deltas, self.init, self.step_size, self.n_steps, self.mask_scope)
        return objective(ci, deltas, sources)


DEFAULT_PGD = PGDSettings()  # one random init, one step of size 1, sources shared across the batch
