"""Leaky hard sigmoids that turn CI logits into causal importances.

Two variants exist because they play different roles: the lower-leaky one makes masks (its forward
never leaves [0, 1], but a small gradient can revive a dead CI), the upper-leaky one feeds the
importance-minimality penalty (a CI above 1 is still penalised, so it is pushed back down).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from spd.models.config import SigmoidType as SigmoidType

LEAK = 0.01

CLAMP_FORWARD: frozenset[str] = frozenset({"leaky_hard", "lower_leaky_hard", "hard"})
"""Sigmoid types whose mask-side forward is clamp(z, 0, 1): their leaks live in the gradient only."""


class _LowerLeakyHardSigmoid(torch.autograd.Function):
    """Forward clamp(z, 0, 1); backward: grad on (0, 1], 0 above 1, LEAK*grad below 0 only if grad < 0."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        ctx.save_for_backward(z)
        return z.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (z,) = ctx.saved_tensors
        inside = (z > 0) & (z <= 1)
        below_and_rising = (z <= 0) & (grad < 0)
        return torch.where(inside, grad, torch.where(below_and_rising, LEAK * grad, torch.zeros_like(grad)))


def lower_leaky_hard_sigmoid(z: Tensor) -> Tensor:
    """Mask-side sigmoid: values in [0, 1]; gradient leaks below 0 only when descent would raise z."""
    return _LowerLeakyHardSigmoid.apply(z)


def upper_leaky_hard_sigmoid(z: Tensor) -> Tensor:
    """Penalty-side sigmoid: 0 below 0 (no gradient), z on [0, 1], 1 + LEAK*(z - 1) above 1."""
    return torch.where(z < 0, torch.zeros_like(z), torch.where(z > 1, 1 + LEAK * (z - 1), z))


def hard_sigmoid(z: Tensor) -> Tensor:
    """Plain clamp to [0, 1] (no leak)."""
    return z.clamp(0.0, 1.0)


SWISH_HARD_BETA = 10.0


def swish_hard_sigmoid(z: Tensor, beta: float = SWISH_HARD_BETA) -> Tensor:
    """Smooth hard sigmoid: swish(z) - swish(z - 1), swish(x) = x·σ(βx).

    About 0 below 0, z on [0, 1] and 1 above, with rounded corners whose width shrinks as β grows (β = 10, the
    reference's). Unlike the clamps it has a gradient everywhere, so a CI on either side of the corners can still
    move; it dips slightly below 0 and above 1 near the corners (by about 0.028 at β = 10).
    """
    return z * torch.sigmoid(beta * z) - (z - 1) * torch.sigmoid(beta * (z - 1))


def get_sigmoids(sigmoid_type: SigmoidType) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """(lower, upper) pair: `leaky_hard` uses both leaky variants; the others use one function for both."""
    if sigmoid_type == "leaky_hard":
        return lower_leaky_hard_sigmoid, upper_leaky_hard_sigmoid
    single = {
        "hard": hard_sigmoid,
        "upper_leaky_hard": upper_leaky_hard_sigmoid,
        "lower_leaky_hard": lower_leaky_hard_sigmoid,
        "normal": torch.sigmoid,
        "swish_hard": swish_hard_sigmoid,
    }[sigmoid_type]
    return single, single
