"""Identity insertion: decompose an identity placed before a Linear.

A sanity check for SPD: an inserted I_d should decompose into d dense subcomponents.
"""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import Tensor, nn

from spd.models.component_model import is_conv1d


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
            if isinstance(module, nn.Linear):
                d_in = module.in_features
            elif is_conv1d(module):  # GPT-2's Conv1D stores its weight (d_in, d_out)
                d_in = module.weight.shape[0]
            else:
                raise ValueError(f"identity insertion needs a Linear or Conv1D; {name!r} is {type(module).__name__}")
            if hasattr(module, "pre_identity"):
                continue
            module.pre_identity = Identity(d_in)
            module.register_forward_pre_hook(_route_through_identity)
            paths.append(f"{name}.pre_identity")
    return paths
