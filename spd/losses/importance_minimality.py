"""Importance minimality: an Lp penalty on causal importances, the sparsity pressure of SPD."""

from __future__ import annotations

import torch
from torch import Tensor


def annealed_p(
    pnorm: float, current_frac: float, start_frac: float = 1.0, final_p: float | None = None, end_frac: float = 1.0
) -> float:
    """p = pnorm before start_frac, linear to final_p at end_frac, final_p after; off if final_p None or start >= 1."""
    if final_p is None or start_frac >= 1.0 or current_frac < start_frac:
        return pnorm
    if current_frac >= end_frac:
        return final_p
    progress = (current_frac - start_frac) / (end_frac - start_frac)
    return pnorm + (final_p - pnorm) * progress


def importance_minimality_loss(
    ci_upper_leaky: dict[str, Tensor],
    pnorm: float,
    current_frac: float = 0.0,
    eps: float = 1e-12,
    beta: float = 0.0,
    world_size: int = 1,
    p_anneal_start_frac: float = 1.0,
    p_anneal_final_p: float | None = None,
    p_anneal_end_frac: float = 1.0,
) -> Tensor:
    """Σ_l Σ_c [m_lc + β m_lc log2(1 + S_lc · world_size)], S_lc = Σ_pos (ci + eps)^p, m_lc = S_lc / N.

    Summed over layers and subcomponents, averaged over positions. The β term (optional) makes the
    penalty grow with how often a subcomponent fires.
    """
    p = annealed_p(pnorm, current_frac, p_anneal_start_frac, p_anneal_final_p, p_anneal_end_frac)
    total: Tensor | None = None
    for ci in ci_upper_leaky.values():
        flat = ci.reshape(-1, ci.shape[-1])
        s = ((flat + eps) ** p).sum(dim=0)
        m = s / flat.shape[0]
        layer = m.sum()
        if beta:
            layer = layer + beta * (m * torch.log2(1 + s * world_size)).sum()
        total = layer if total is None else total + layer
    if total is None:
        raise ValueError("importance_minimality_loss needs at least one module")
    return total


__all__ = ["annealed_p", "importance_minimality_loss"]
