"""PGD reconstruction (reference spec 6): output divergence under adversarial masks found afresh each call.

`pgd_recon_loss` replaces every module (routing "all") or a router's subset per position (the Subset loss:
routing masks are drawn once per call and held fixed through the ascent). `pgd_recon_layerwise_loss` runs a
separate PGD per module with only that module replaced, pooling sums and counts.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from spd.losses.divergence import OutputLossType, divergence_sum_and_count
from spd.losses.pgd import MaskScope, PGDInit, pgd_sources, source_mask_infos
from spd.models.component_model import ComponentModel
from spd.models.routing import route


def _pgd_sum_and_count(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    init: PGDInit,
    step_size: float,
    n_steps: int,
    mask_scope: MaskScope,
    output_loss_type: OutputLossType,
    routing: dict[str, Tensor] | None,
) -> tuple[Tensor, int]:
    def forward_sum(c: dict[str, Tensor], d: dict[str, Tensor] | None, src: dict[str, Tensor]) -> tuple[Tensor, int]:
        out = model(batch, source_mask_infos(c, d, src, routing))
        return divergence_sum_and_count(out, target_out, output_loss_type)

    def forward_mean(c: dict[str, Tensor], d: dict[str, Tensor] | None, src: dict[str, Tensor]) -> Tensor:
        total, n = forward_sum(c, d, src)
        return total / n

    sources = pgd_sources(forward_mean, ci, deltas, init, step_size, n_steps, mask_scope)
    return forward_sum(ci, deltas, sources)


def pgd_recon_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    init: PGDInit = "random",
    step_size: float = 1.0,
    n_steps: int = 1,
    mask_scope: MaskScope = "shared_across_batch",
    output_loss_type: OutputLossType = "mse",
    routing: str | Any = "all",
) -> Tensor:
    """Divergence of the forward with adversarial masks g + (1 - g) s (δ mask s[..., C] when deltas are given)."""
    s, n = _pgd_sum_and_count(
        model, batch, target_out, ci, deltas, init, step_size, n_steps, mask_scope, output_loss_type, route(routing, ci)
    )
    return s / n


def pgd_recon_layerwise_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    init: PGDInit = "random",
    step_size: float = 1.0,
    n_steps: int = 1,
    mask_scope: MaskScope = "shared_across_batch",
    output_loss_type: OutputLossType = "mse",
) -> Tensor:
    """One PGD per module with only that module replaced; Σ of the divergences / Σ of their counts."""
    total, count = 0.0, 0
    for path, g in ci.items():
        d = {path: deltas[path]} if deltas is not None else None
        s, n = _pgd_sum_and_count(
            model, batch, target_out, {path: g}, d, init, step_size, n_steps, mask_scope, output_loss_type, None
        )
        total, count = total + s, count + n
    return total / count
