"""Layerwise CI-masked reconstruction: one module at a time with masks m = g, the others run the target."""

from __future__ import annotations

from torch import Tensor

from spd.losses.divergence import OutputLossType, divergence_sum_and_count
from spd.models import masks as mask_lib
from spd.models.component_model import ComponentModel


def ci_masked_recon_layerwise_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    ci: dict[str, Tensor],
    output_loss_type: OutputLossType = "mse",
) -> Tensor:
    """Σ over modules of the divergence with only that module CI-masked, divided by L · count."""
    total, count = 0.0, 0
    for path, info in mask_lib.ci_mask_infos(ci).items():
        s, n = divergence_sum_and_count(model(batch, {path: info}), target_out, output_loss_type)
        total, count = total + s, count + n
    return total / count
