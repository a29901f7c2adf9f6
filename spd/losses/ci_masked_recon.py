"""CI-masked reconstruction: masks are the CIs themselves, no delta; optionally a router's subset."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from spd.losses.divergence import OutputLossType, divergence_sum_and_count
from spd.models import masks as mask_lib
from spd.models.component_model import ComponentModel
from spd.models.routing import route


def ci_masked_recon_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    ci: dict[str, Tensor],
    output_loss_type: OutputLossType = "mse",
    routing: str | Any = "all",
) -> Tensor:
    """Divergence of the forward with every module's subcomponents scaled by their CI g."""
    s, n = divergence_sum_and_count(
        model(batch, mask_lib.ci_mask_infos(ci, route(routing, ci))), target_out, output_loss_type
    )
    return s / n
