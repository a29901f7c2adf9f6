"""A reference checkpoint (`model_<step>.pth`, `ComponentModel.state_dict()` of goodfire-ai/spd) as ours.

The two layouts agree on the target (`target_model.*`, when the target class is one of ours that keeps the
reference's module names) and on the components (`_components.<path with '.' -> '-'>.{V,U,bias}`). They
differ in the CI functions:

- layerwise (`ci_fn._ci_fns.<m>.layers.<i>`): the reference keeps its GELUs inside an `nn.Sequential`, so its
  linear layers sit at the even indices 0, 2, 4, ...; ours are a ModuleList of linear layers 0, 1, 2, ...
- global_reverse_residual (`ci_fn._global_ci_fn.<part>.<block name>...`): the reference keys every part by
  block name; ours index the parts by block position (`ci_fn._global.<part>.<k>`), with the same Sequential
  index shift inside transitions and readers. The order of the modules inside a block is not in the keys at
  all: it lives in the forward (spd/models/global_ci.py, `member_order: config`), and a conversion that only
  renames keys loads with strict=True and computes wrong CIs if the order is wrong.
- global_shared_mlp (`ci_fn._global_ci_fn.layers.<i>`): one Sequential, the same index shift as layerwise.

Identity insertions: the reference's `Identity` has no parameters; ours is a frozen identity Linear, so its
weight (the identity matrix) is added.

Checkpoints written by older versions of the reference use older key names; the reference renames them when
it loads one, and so does `modernize_keys` (the same rules) before anything else.

Every key must be understood: an unknown one raises `StateDictMismatch` naming it, instead of being dropped.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from spd.models.config import GlobalCiFnConfig

if TYPE_CHECKING:  # the error class is read at plan time; tensors only when an import runs
    from torch import Tensor

TARGET_PREFIX = "target_model."
COMPONENTS_PREFIX = "_components."
LAYERWISE_PREFIX = "ci_fn._ci_fns."
GLOBAL_PREFIX = "ci_fn._global_ci_fn."

_SEQUENTIAL_LAYER = re.compile(r"^(?P<index>\d+)\.(?P<param>W|b)$")
# reference part name -> ours, and whether the part is an nn.Sequential with GELUs at odd indices
_GLOBAL_PARTS = {
    "_inp_projectors": ("proj_in", False),
    "_transition_norms": ("transition_norms", False),
    "_reader_norms": ("reader_norms", False),
    "_transitions": ("transitions", True),
    "_readers": ("readers", True),
}


class StateDictMismatch(ValueError):
    """The reference checkpoint holds keys this importer does not know how to map."""


def _linear_index(rest: str, key: str) -> str:
    """`<2i>.W` -> `<i>.W`: the i-th linear layer of a reference Sequential whose odd entries are GELUs."""
    m = _SEQUENTIAL_LAYER.match(rest)
    if m is None or int(m["index"]) % 2:
        raise StateDictMismatch(f"{key}: expected <even index>.W or .b inside a CI-function Sequential")
    return f"{int(m['index']) // 2}.{m['param']}"


def convert_layerwise_ci(key: str) -> str:
    """`ci_fn._ci_fns.<m>.layers.<2i>.<p>` -> `ci_fn._ci_fns.<m>.layers.<i>.<p>`."""
    module, sep, rest = key.removeprefix(LAYERWISE_PREFIX).partition(".layers.")
    if not sep:
        raise StateDictMismatch(f"{key}: a layerwise CI function key without `.layers.`")
    return f"{LAYERWISE_PREFIX}{module}.layers.{_linear_index(rest, key)}"


def convert_global_ci(key: str, config: GlobalCiFnConfig) -> str:
    """`ci_fn._global_ci_fn.<part>.<block>...` -> `ci_fn._global.<our part>.<block position>...`;
    global_shared_mlp: `ci_fn._global_ci_fn.layers.<2i>.<p>` -> `ci_fn._global.layers.<i>.<p>`."""
    part, _, rest = key.removeprefix(GLOBAL_PREFIX).partition(".")
    if config.fn_type == "global_shared_mlp":
        if part != "layers":
            raise StateDictMismatch(f"{key}: global_shared_mlp holds only `layers`")
        return f"ci_fn._global.layers.{_linear_index(rest, key)}"
    if part not in _GLOBAL_PARTS:
        raise StateDictMismatch(f"{key}: unknown part {part!r} of global_reverse_residual (attention transitions?)")
    ours, is_sequential = _GLOBAL_PARTS[part]
    positions = {b.name.replace(".", "-"): k for k, b in enumerate(config.block_groups)}
    block = next((name for name in positions if rest.startswith(name + ".")), None)
    if block is None:
        raise StateDictMismatch(f"{key}: block name not among block_groups {list(positions)}")
    inner = rest[len(block) + 1 :]
    if is_sequential:
        # a transition without hidden width is a single Linear (`<part>.<block>.W`): our list's layer 0
        inner = f"0.{inner}" if inner in ("W", "b") else _linear_index(inner, key)
    return f"ci_fn._global.{ours}.{positions[block]}.{inner}"


def identity_weights(state: dict[str, Tensor], identity_paths: list[str]) -> dict[str, Tensor]:
    """Our frozen identity Linear's weight for every inserted identity (its size read from the components)."""
    out = {}
    for path in identity_paths:
        v = state.get(f"{COMPONENTS_PREFIX}{path.replace('.', '-')}.V")
        if v is None:
            raise StateDictMismatch(f"identity module {path!r} has no components in the checkpoint")
        import torch

        out[f"{TARGET_PREFIX}{path}.weight"] = torch.eye(v.shape[0], dtype=v.dtype)
    return out


def modernize_key(key: str) -> str:
    """An older reference key in today's spelling (the renames the reference applies to old checkpoints)."""
    key = key.replace("_gates.", "_ci_fns.")  # CI functions were called gates
    if key.startswith("patched_model."):
        key = TARGET_PREFIX + key.removeprefix("patched_model.")
    if key.endswith(".original.weight"):  # target modules were wrapped
        key = key.removesuffix(".original.weight") + ".weight"
    for param in ("U", "V"):  # components lived inside the target's modules
        if key.endswith(f".components.{param}"):
            path = key.removeprefix(TARGET_PREFIX).removesuffix(f".components.{param}")
            key = f"{COMPONENTS_PREFIX}{path.replace('.', '-')}.{param}"
    if key.startswith("_ci_fns."):
        key = "ci_fn." + key
    return key


def modernize_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The whole checkpoint with `modernize_key` applied (idempotent: today's keys are unchanged)."""
    return {modernize_key(k): v for k, v in state.items()}


def convert_reference_state_dict(
    state: dict[str, Tensor], global_ci: GlobalCiFnConfig | None, identity_paths: list[str]
) -> dict[str, Tensor]:
    """The reference's ComponentModel state dict with our keys (tensors shared, not copied)."""
    state = modernize_keys(state)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith((TARGET_PREFIX, COMPONENTS_PREFIX)):
            new = key
        elif key.startswith(LAYERWISE_PREFIX) and global_ci is None:
            new = convert_layerwise_ci(key)
        elif key.startswith(GLOBAL_PREFIX) and global_ci is not None:
            new = convert_global_ci(key, global_ci)
        else:
            kind = "global" if global_ci is not None else "layerwise"
            raise StateDictMismatch(f"{key}: not a key of a reference ComponentModel with a {kind} CI function")
        out[new] = value
    out.update(identity_weights(state, identity_paths))
    return out
