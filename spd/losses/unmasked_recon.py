"""Unmasked reconstruction: all-ones masks, no delta — do the subcomponents alone rebuild W?"""

from __future__ import annotations

from torch import Tensor

from spd.losses.divergence import OutputLossType, divergence_sum_and_count
from spd.models import masks as mask_lib
from spd.models.component_model import ComponentModel


def unmasked_recon_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    ci: dict[str, Tensor],
    output_loss_type: OutputLossType = "mse",
) -> Tensor:
    """Divergence with all subcomponents fully on and no delta term."""
    s, n = divergence_sum_and_count(model(batch, mask_lib.ones_mask_infos(ci)), target_out, output_loss_type)
    return s / n
