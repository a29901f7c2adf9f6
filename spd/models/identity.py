"""Identity insertion (reference spec section 1.2): decompose an identity placed before a Linear.

A sanity check for SPD: an inserted I_d should decompose into d dense subcomponents.
"""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import Tensor, nn


class Identity(nn.Linear):
    """A frozen d x d identity Linear: decomposable like any Linear, and it changes nothing."""

    def __init__(self, d: int) -> None:
        super().__init__(d, d, bias=False)
        with torch.no_grad():
            self.weight.copy_(torch.eye(d))
        self.weight.requires_grad_(False)


def _route_through_identity(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (module.pre_identity(args[0]), *args[1:])


def insert_identity_operations(target: nn.Module, patterns: list[str]) -> list[str]:
    """Attach `<module>.pre_identity` to every Linear matching a pattern; returns the new module paths."""
    paths = []
    for pattern in patterns:
        matched = [
            (name, m) for name, m in target.named_modules() if fnmatch(name, pattern) and not isinstance(m, Identity)
        ]
        if not matched:
            raise ValueError(f"identity pattern {pattern!r} matches no module")
        for name, module in matched:
            if isinstance(module, nn.Embedding) or not hasattr(module, "in_features"):
                raise ValueError(f"identity insertion needs a Linear module; {name!r} is {type(module).__name__}")
            if hasattr(module, "pre_identity"):
                continue
            module.pre_identity = Identity(module.in_features)
            module.register_forward_pre_hook(_route_through_identity)
            paths.append(f"{name}.pre_identity")
    return paths
