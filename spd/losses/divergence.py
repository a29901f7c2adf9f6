"""Output divergences with the reference normalisation: (sum of per-element losses, element count).

Returning sums and counts lets every reconstruction loss pool several forward passes and divide once,
which is exactly "mean over mask samples (and layers)".
"""

from __future__ import annotations

import torch
from torch import Tensor

from spd.losses.config import OutputLossType as OutputLossType


def divergence_sum_and_count(pred: Tensor, target: Tensor, loss_type: OutputLossType) -> tuple[Tensor, int]:
    """mse: Σ (pred - target)^2 over all elements; kl: Σ_positions KL(softmax(target) || softmax(pred))."""
    if loss_type == "mse":
        return ((pred - target) ** 2).sum(), target.numel()
    if loss_type == "kl":
        log_q = torch.log_softmax(pred, dim=-1)
        log_p = torch.log_softmax(target, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum()
        return kl, target[..., 0].numel()
    raise ValueError(f"unknown output loss type {loss_type!r}")
