"""Hidden-activation reconstruction: MSE between every decomposed module's output in a
masked forward and in the target forward.

All modules are masked at once, so upstream errors propagate (module l + 1 sees the component output of l).
Loss = Σ_l Σ (out_l - target_out_l)² / Σ_l numel. Variants differ only in the masks: stochastic
(g + (1 - g) u, δ included), CI (m = g, no δ) and PGD / persistent PGD (g + (1 - g) s from adversarial
sources; build the mask infos with spd.losses.persistent_pgd and pass them to `hidden_acts_recon`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from spd.losses.pgd import DEFAULT_PGD, PGDSettings, source_mask_infos
from spd.models import masks as mask_lib
from spd.models.component_model import ComponentModel
from spd.models.masks import MaskInfo


def hidden_acts_recon(
    model: ComponentModel,
    batch: Tensor,
    mask_infos: dict[str, MaskInfo],
    target_outputs: dict[str, Tensor] | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """(pooled MSE over all modules, per-module MSE) of the masked forward's module outputs."""
    if target_outputs is None:
        with torch.no_grad():
            _, target_outputs = model.forward_with_outputs(batch)
    total, count, squared = _squared_errors(model, batch, mask_infos, target_outputs)
    per_module = {path: float(sq.detach()) / target_outputs[path].numel() for path, sq in squared.items()}
    return total / count, per_module


@torch.no_grad()
def hidden_acts_squared_errors(
    model: ComponentModel,
    batch: Tensor,
    mask_infos: dict[str, MaskInfo],
    target_outputs: dict[str, Tensor] | None = None,
) -> dict[str, tuple[float, int]]:
    """Per masked module, (Σ squared error of its output, its number of elements): for evals that pool several
    batches per module and over modules before dividing, as the reference's hidden-activation evals do."""
    if target_outputs is None:
        _, target_outputs = model.forward_with_outputs(batch)
    _, _, squared = _squared_errors(model, batch, mask_infos, target_outputs)
    return {path: (float(sq), target_outputs[path].numel()) for path, sq in squared.items()}


def _squared_errors(
    model: ComponentModel, batch: Tensor, mask_infos: dict[str, MaskInfo], target_outputs: dict[str, Tensor]
) -> tuple[Tensor, int, dict[str, Tensor]]:
    """(Σ squared errors over the masked modules, their number of elements, Σ squared errors per module)."""
    _, outputs = model.forward_with_outputs(batch, mask_infos)
    total, count, squared = 0.0, 0, {}
    for path in mask_infos:
        squared[path] = ((outputs[path] - target_outputs[path]) ** 2).sum()
        total, count = total + squared[path], count + target_outputs[path].numel()
    return total, count, squared


def stochastic_hidden_acts_recon_loss(
    model: ComponentModel,
    batch: Tensor,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    n_mask_samples: int = 1,
    sampling: mask_lib.Sampling = "continuous",
) -> Tensor:
    """Mean over mask samples of the hidden-activation MSE with stochastic masks (δ included when given)."""
    with torch.no_grad():
        _, target_outputs = model.forward_with_outputs(batch)
    losses = [
        hidden_acts_recon(model, batch, mask_lib.stochastic_mask_infos(ci, sampling, deltas), target_outputs)[0]
        for _ in range(n_mask_samples)
    ]
    return sum(losses) / n_mask_samples


def ci_hidden_acts_recon_loss(model: ComponentModel, batch: Tensor, ci: dict[str, Tensor]) -> Tensor:
    """Hidden-activation MSE with masks m = g and no δ."""
    return hidden_acts_recon(model, batch, mask_lib.ci_mask_infos(ci))[0]


def pgd_hidden_acts_recon_loss(
    model: ComponentModel,
    batch: Tensor,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    pgd: PGDSettings = DEFAULT_PGD,
) -> Tensor:
    """Hidden-activation MSE under adversarial sources s ∈ [0, 1] (masks g + (1 - g) s[..., :C], δ mask s[..., C]).

    A fresh PGD each call (as in spd.losses.pgd): `pgd.init`, then `pgd.n_steps` of s <- clamp(s + pgd.step_size·sign(∂L/∂s), 0, 1)
    with CIs and deltas held fixed; the returned loss is one more forward with those sources held constant, so
    its gradient reaches the CI functions and the components only.
    """
    with torch.no_grad():
        _, target_outputs = model.forward_with_outputs(batch)

    def squared_error(c: dict[str, Tensor], d: dict[str, Tensor] | None, src: dict[str, Tensor]) -> tuple[Tensor, int]:
        total, count, _ = _squared_errors(model, batch, source_mask_infos(c, d, src), target_outputs)
        return total, count

    total, count = pgd.sum_and_count(squared_error, ci, deltas)
    return total / count
