"""Train a toy target seed after seed until it passes its feature check (`feature_check`, `resid_mlp_feature_check`).

Toy targets are finicky: some seeds drop features. A benchmark on such a target is invalid, so a trainer
accepts only a target whose check finds no missing feature, and otherwise fails with every attempt listed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


class DegenerateTargetError(RuntimeError):
    """No seed gave a target that represents every feature."""


def train_until_features_pass(
    train_once: Callable[[int], tuple[M, float]],
    missing_features: Callable[[M], list[int]],
    seeds: range,
    what: str,
    hint: str,
    log: Callable[[str], None] = print,
) -> tuple[M, dict]:
    """(frozen model, info with the chosen seed, its final loss and every attempt) for the first passing seed."""
    tried = []
    for seed in seeds:
        start = time.perf_counter()
        model, loss = train_once(seed)
        missing = missing_features(model)
        tried.append({"seed": seed, "final_loss": loss, "missing_features": missing})
        log(f"{what} seed {seed}: loss {loss:.3e}, missing features {missing} ({time.perf_counter() - start:.1f}s)")
        if not missing:
            model.eval().requires_grad_(False)
            return model, {"seed": seed, "final_loss": loss, "attempts": tried}
    raise DegenerateTargetError(
        f"no {what} trained with seeds {seeds.start}..{seeds.stop - 1} represents every feature: {tried}. "
        f"A target that drops features gives a decomposition of fewer features and an invalid benchmark; {hint}."
    )
