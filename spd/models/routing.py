"""Routers (reference spec 4.2): which modules are replaced by components at which positions.

A routing is a dict module -> bool tensor over the leading (batch, position) dims; False positions keep the
target module's original output.
"""

from __future__ import annotations

import torch
from torch import Tensor


def uniform_k_subset_routing(
    paths: list[str], leading_shape: tuple[int, ...], device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """Per position draw k ~ UniformInt{1..L}, then route a uniformly random k-subset of the L modules."""
    n = len(paths)
    k = torch.randint(1, n + 1, (*leading_shape, 1), device=device)
    ranks = torch.rand(*leading_shape, n, device=device).argsort(-1).argsort(-1)  # a random permutation's ranks
    routed = ranks < k
    return {p: routed[..., i] for i, p in enumerate(paths)}


def static_probability_routing(
    paths: list[str], leading_shape: tuple[int, ...], p: float, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """Each module routed independently with probability p per position."""
    return {path: torch.rand(leading_shape, device=device) < p for path in paths}
