"""PGD reconstruction: output divergence under adversarial masks found afresh each call.

`pgd_recon_loss` replaces every module (routing "all") or a router's subset per position (the Subset loss:
routing masks are drawn once per call and held fixed through the ascent). `pgd_recon_layerwise_loss` runs a
separate PGD per module with only that module replaced, pooling sums and counts.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from spd.losses.divergence import OutputLossType, divergence_sum_and_count
from spd.losses.pgd import DEFAULT_PGD, PGDSettings, SumAndCount, source_mask_infos
from spd.models.component_model import ComponentModel
from spd.models.routing import route


def _divergence(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    output_loss_type: OutputLossType,
    routing: dict[str, Tensor] | None,
) -> SumAndCount:
    """(sum, count) of the output divergence of the forward with the source masks of the modules in `ci`."""

    def forward_sum(c: dict[str, Tensor], d: dict[str, Tensor] | None, src: dict[str, Tensor]) -> tuple[Tensor, int]:
        out = model(batch, source_mask_infos(c, d, src, routing))
        return divergence_sum_and_count(out, target_out, output_loss_type)

    return forward_sum


def pgd_recon_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    pgd: PGDSettings = DEFAULT_PGD,
    output_loss_type: OutputLossType = "mse",
    routing: str | Any = "all",
) -> Tensor:
    """Divergence of the forward with adversarial masks g + (1 - g) s (δ mask s[..., C] when deltas are given)."""
    divergence = _divergence(model, batch, target_out, output_loss_type, route(routing, ci))
    s, n = pgd.sum_and_count(divergence, ci, deltas)
    return s / n


def pgd_recon_layerwise_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    pgd: PGDSettings = DEFAULT_PGD,
    output_loss_type: OutputLossType = "mse",
) -> Tensor:
    """One PGD per module with only that module replaced; Σ of the divergences / Σ of their counts."""
    divergence = _divergence(model, batch, target_out, output_loss_type, None)
    total, count = 0.0, 0
    for path, g in ci.items():
        d = {path: deltas[path]} if deltas is not None else None
        s, n = pgd.sum_and_count(divergence, {path: g}, d)
        total, count = total + s, count + n
    return total / count
