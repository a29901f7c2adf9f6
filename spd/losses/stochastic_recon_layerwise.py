"""Layerwise stochastic reconstruction: one module masked at a time, the others run the target.

Complements the all-layer loss: each module's components must stand on their own, not only jointly.
"""

from __future__ import annotations

from torch import Tensor

from spd.losses.divergence import OutputLossType, divergence_sum_and_count
from spd.models import masks as mask_lib
from spd.models.component_model import ComponentModel


def stochastic_recon_layerwise_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    n_mask_samples: int = 1,
    sampling: mask_lib.Sampling = "continuous",
    output_loss_type: OutputLossType = "mse",
) -> Tensor:
    """Σ over samples and modules of the divergence, divided by S · L · count."""
    total, count = 0.0, 0
    for _ in range(n_mask_samples):
        infos = mask_lib.stochastic_mask_infos(ci, sampling, deltas)
        for path, info in infos.items():
            s, n = divergence_sum_and_count(model(batch, {path: info}), target_out, output_loss_type)
            total, count = total + s, count + n
    return total / count
