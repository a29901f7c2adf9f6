"""Sparse synthetic features for toy targets (TMS and residual MLP, as the reference's): generated on the fly."""

from __future__ import annotations

import torch
from torch import Tensor

from spd.targets.config import DataGenerationType as DataGenerationType


def sparse_feature_batch(
    batch_size: int,
    n_features: int,
    feature_probability: float,
    device: torch.device | str = "cpu",
    data_generation_type: DataGenerationType = "at_least_zero_active",
    value_range: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Each feature independently on with prob p and value U[lo, hi], else 0 (or exactly one feature on)."""
    lo, hi = value_range
    values = torch.rand(batch_size, n_features, device=device, generator=generator) * (hi - lo) + lo
    if data_generation_type == "at_least_zero_active":
        active = torch.rand(batch_size, n_features, device=device, generator=generator) < feature_probability
    elif data_generation_type == "exactly_one_active":
        idx = torch.randint(0, n_features, (batch_size,), device=device, generator=generator)
        active = torch.nn.functional.one_hot(idx, n_features).bool()
    else:
        raise ValueError(f"unknown data generation type {data_generation_type!r}")
    return values * active
