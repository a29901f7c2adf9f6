"""LM evaluation (the reference's `CEandKLLosses`): how much of the target's next-token behaviour survives
when its decomposed modules are replaced by masked components.

For each mask kind X the model is run on the window `tokens` [B, T] and compared with the target:
    kl_X   mean over positions of KL(softmax(target) || softmax(model_X))
    ce_X   next-token cross-entropy (logits[:, :-1] against tokens[:, 1:]; no prediction crosses windows)
    ce_unrecovered_X = (ce_X - ce_target) / (ce_zero_masked - ce_target)   (0 = as good as the target)
Mask kinds: ci_masked (m = g), unmasked (m = 1), stoch_masked (g + (1 - g) u, δ included when given),
random_masked (m ~ U[0, 1)), rounded_masked (m = 1[g > threshold]), zero_masked (m = 0).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from spd.models.component_model import ComponentModel
from spd.models.masks import MaskInfo, Sampling, stochastic_mask_infos

MASK_KINDS = ("ci_masked", "unmasked", "stoch_masked", "random_masked", "rounded_masked", "zero_masked")


def next_token_ce(logits: Tensor, tokens: Tensor) -> float:
    """Mean CE of predicting tokens[:, t + 1] from logits[:, t]."""
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)))


def kl_per_position(target_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(p_target || p_model) of the next-token distributions at each position (the last dimension is the vocab)."""
    log_p = torch.log_softmax(target_logits, -1)
    log_q = torch.log_softmax(logits, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def mean_kl(target_logits: Tensor, logits: Tensor) -> float:
    """Mean over positions of KL(p_target || p_model)."""
    return float(kl_per_position(target_logits, logits).mean())


def _mask_infos(
    kind: str, ci: dict[str, Tensor], deltas: dict[str, Tensor] | None, sampling: Sampling, threshold: float
) -> dict[str, MaskInfo]:
    if kind == "stoch_masked":
        return stochastic_mask_infos(ci, sampling, deltas)
    make = {
        "ci_masked": lambda g: g,
        "unmasked": torch.ones_like,
        "random_masked": torch.rand_like,
        "rounded_masked": lambda g: (g > threshold).to(g.dtype),
        "zero_masked": torch.zeros_like,
    }[kind]
    return {path: MaskInfo(mask=make(g)) for path, g in ci.items()}


@torch.no_grad()
def ce_and_kl(
    model: ComponentModel,
    tokens: Tensor,
    target_logits: Tensor,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None = None,
    sampling: Sampling = "continuous",
    rounding_threshold: float = 0.0,
) -> dict[str, float]:
    """kl_X, ce_X, ce_unrecovered_X for every mask kind X, plus ce_target."""
    out = {"ce_target": next_token_ce(target_logits, tokens)}
    for kind in MASK_KINDS:
        logits = model(tokens, _mask_infos(kind, ci, deltas, sampling, rounding_threshold))
        out[f"kl_{kind}"] = mean_kl(target_logits, logits)
        out[f"ce_{kind}"] = next_token_ce(logits, tokens)
    return add_ce_unrecovered(out)


def add_ce_unrecovered(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Add ce_unrecovered_X from (possibly batch-averaged) ce_X values; NaN when zero-masking costs nothing."""
    target = metrics[f"{prefix}ce_target"]
    span = metrics[f"{prefix}ce_zero_masked"] - target
    for kind in MASK_KINDS:
        value = (metrics[f"{prefix}ce_{kind}"] - target) / span if span else float("nan")
        metrics[f"{prefix}ce_unrecovered_{kind}"] = value
    return metrics
