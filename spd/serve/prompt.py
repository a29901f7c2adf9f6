"""One prompt through the decomposition: the target's predictions, every module's causal importances (CI), and
the predictions of the CI-masked model (each component scaled by its own CI, no delta term: the reconstruction
SPD trains). What `serve` shows first, and the base every intervention starts from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from spd.models.component_model import ComponentModel
from spd.models.masks import ci_mask_infos
from spd.train.lm_metrics import kl_per_position


@dataclass(frozen=True)
class PromptRun:
    """Model outputs for one prompt (batch dimension dropped); logits are float32 on the CPU."""

    token_ids: list[int]
    target_logits: Tensor  # [T, V]
    ci: dict[str, Tensor]  # module -> [T, C] lower-leaky CI (what masks read), CPU
    masked_logits: Tensor  # [T, V] with every module masked by its CI


def model_device(model: ComponentModel) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def masked_logits(model: ComponentModel, token_ids: list[int], masks: dict[str, Tensor]) -> Tensor:
    """[T, V] logits of the model with every module in `masks` ([T, C] each) replaced by its masked components."""
    device = model_device(model)
    ids = torch.tensor([token_ids], device=device)
    infos = ci_mask_infos({m: mask.to(device)[None] for m, mask in masks.items()})
    return model(ids, infos)[0].float().cpu()


@torch.no_grad()
def run_prompt(model: ComponentModel, token_ids: list[int]) -> PromptRun:
    """The target forward (which also yields each module's input, hence its CI), then the CI-masked forward."""
    if not token_ids:
        raise ValueError("the prompt has no tokens")
    ids = torch.tensor([token_ids], device=model_device(model))
    logits, inputs = model.forward_with_inputs(ids)
    ci = {m: c[0].float().cpu() for m, c in model.lower_leaky_ci(inputs).items()}
    return PromptRun(list(token_ids), logits[0].float().cpu(), ci, masked_logits(model, token_ids, ci))


def top_predictions(logits: Tensor, k: int) -> list[list[tuple[int, float]]]:
    """Per position, the k most probable next tokens as (token id, probability)."""
    probs = torch.softmax(logits.double(), dim=-1)
    values, ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [
        list(zip(row_ids.tolist(), row_p.tolist(), strict=True)) for row_ids, row_p in zip(ids, values, strict=True)
    ]


def kl_list(reference: Tensor, other: Tensor) -> list[float]:
    """KL(reference || other) of the next-token distributions at each position, in nats (float64; a rounding
    residue below 0 shows as 0)."""
    return kl_per_position(reference.double(), other.double()).clamp_min(0.0).tolist()


def active_components(ci: dict[str, Tensor], threshold: float) -> dict[str, Tensor]:
    """module -> bool [T, C]: the components whose CI exceeds `threshold` at each position."""
    return {m: c > threshold for m, c in ci.items()}
