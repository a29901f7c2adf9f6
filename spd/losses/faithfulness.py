"""Faithfulness loss: mean squared entry of W - ΣUV over all decomposed matrices."""

from __future__ import annotations

from torch import Tensor


def faithfulness_loss(deltas: dict[str, Tensor]) -> Tensor:
    """Σ_l ||Δ_l||_F^2 / Σ_l numel(Δ_l): keeps the summed subcomponents equal to the target weights."""
    total = sum((d**2).sum() for d in deltas.values())
    count = sum(d.numel() for d in deltas.values())
    return total / count
