"""Routers: which modules are replaced by components at which positions.

A routing is a dict module -> bool tensor over the leading (batch, position) dims; False positions keep the
target module's original output.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spd.models.config import RoutingConfig as RoutingConfig


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


def route(routing: str | RoutingConfig, ci: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """Fresh routing masks over the CI's leading dims; None means every module at every position.

    `routing` is "all", "uniform_k_subset", or a RoutingConfig.
    """
    kind = routing if isinstance(routing, str) else routing.type
    if kind == "all":
        return None
    first = next(iter(ci.values()))
    leading, device = tuple(first.shape[:-1]), first.device
    if kind == "uniform_k_subset":
        return uniform_k_subset_routing(list(ci), leading, device)
    if kind == "static_probability":
        return static_probability_routing(list(ci), leading, routing.p, device)
    raise ValueError(f"unknown routing {kind!r}")
