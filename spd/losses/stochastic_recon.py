"""Stochastic reconstruction: masks g + (1 - g) u, delta included.

With routing "all" every module is replaced; with a router (the Subset loss, spd/models/routing.py) a random subset of
modules per position, redrawn for every mask sample. Unrouted positions keep the target output: they add
zero loss but count in the mean.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from spd.losses.divergence import OutputLossType, divergence_sum_and_count
from spd.models import masks as mask_lib
from spd.models.component_model import ComponentModel
from spd.models.routing import route


def stochastic_recon_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    n_mask_samples: int = 1,
    sampling: mask_lib.Sampling = "continuous",
    output_loss_type: OutputLossType = "mse",
    routing: str | Any = "all",
) -> Tensor:
    """Mean divergence over `n_mask_samples` stochastically masked forwards (routing: "all" or a router)."""
    total, count = 0.0, 0
    for _ in range(n_mask_samples):
        infos = mask_lib.stochastic_mask_infos(ci, sampling, deltas, route(routing, ci))
        s, n = divergence_sum_and_count(model(batch, infos), target_out, output_loss_type)
        total, count = total + s, count + n
    return total / count
