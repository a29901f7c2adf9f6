"""Global causal-importance functions: `global_reverse_residual` (the reference's) and `global_shared_mlp`.

One network sees every decomposed module. Modules are grouped into ordered blocks (by convention from the
output end backwards). A residual r (... x d_resid) starts at zero; for block k:

    r += P_k(concat of block k's module inputs)                    (projection in)
    if k is not the last block:  r += T_k(RMSNorm(r))               (transition: Linear, or Linear-GELU-Linear
                                                                     when transition_hidden_dim is set)
    logits of block k = Reader_k(RMSNorm(r))                        (Linear+GELU per reader_hidden_dims, then
                                                                     Linear -> Σ C of the block's modules)

so the CIs of an early block can depend on everything read by the blocks after it. As in the reference
code, block k's transition is applied before its reader and the last block has no transition. Inputs are
the module inputs x (embeddings: their component activations V[token]). Inside a block, modules are
ordered as the reference orders them: the block's patterns in their listed order, and for each pattern the
decomposed modules it matches in module order (module_info order, then the target's definition order). That
order decides which input columns the projection reads and how the reader's output is split, so a checkpoint
read with another order loads without error and computes wrong CIs. Decompositions written before this order
was adopted ordered members by name; `member_order: name` in their config keeps them loading as trained.
RMSNorms have a learnable weight.
"""

from __future__ import annotations

import itertools
from fnmatch import fnmatch
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from spd.models.ci_fns import RELU_GAIN, PlainLinear
from spd.models.config import BlockGroup as BlockGroup
from spd.models.config import GlobalCiFnConfig


def block_members(patterns: list[str], paths: list[str], member_order: Literal["config", "name"]) -> list[str]:
    """The modules of one block in the order its input is concatenated and its reader's output is split."""
    members: list[str] = []
    for pattern in patterns:
        members += [p for p in paths if fnmatch(p, pattern) and p not in members]
    return sorted(members) if member_order == "name" else members


def assign_blocks(config: GlobalCiFnConfig, paths: list[str]) -> list[list[str]]:
    """Module paths of every block (`paths` in module order); each module must match exactly one block."""
    owner: dict[str, str] = {}
    blocks: list[list[str]] = []
    for block in config.block_groups:
        members = block_members(block.patterns, paths, config.member_order)
        for p in members:
            if p in owner:
                raise ValueError(f"module {p!r} is matched by blocks {owner[p]!r} and {block.name!r}")
            owner[p] = block.name
        if not members:
            raise ValueError(f"block {block.name!r} matches no decomposed module")
        blocks.append(members)
    missing = [p for p in paths if p not in owner]
    if missing:
        raise ValueError(f"decomposed modules in no block of global_reverse_residual: {missing}")
    return blocks


def _mlp(dims: list[int], last_gain: float) -> nn.ModuleList:
    return nn.ModuleList(
        PlainLinear(a, b, last_gain if i == len(dims) - 2 else RELU_GAIN)
        for i, (a, b) in enumerate(itertools.pairwise(dims))
    )


def _run_mlp(layers: nn.ModuleList, x: Tensor) -> Tensor:
    for i, layer in enumerate(layers):
        x = layer(x)
        if i < len(layers) - 1:
            x = F.gelu(x)
    return x


class GlobalReverseResidualCiFn(nn.Module):
    """Maps {module path: input (..., d_in_l)} to {module path: CI logits (..., C_l)} (see the module docstring)."""

    def __init__(self, config: GlobalCiFnConfig, module_to_c: dict[str, int], input_dims: dict[str, int]) -> None:
        super().__init__()
        self.config = config
        self.blocks = assign_blocks(config, list(module_to_c))
        self.module_to_c = dict(module_to_c)
        d = config.d_resid_ci_fn
        assert d is not None  # the config's validator requires it for global_reverse_residual
        n = len(self.blocks)
        self.proj_in = nn.ModuleList(PlainLinear(sum(input_dims[p] for p in b), d, RELU_GAIN) for b in self.blocks)
        self.transition_norms = nn.ModuleList(nn.RMSNorm(d) for _ in range(n - 1))
        h = config.transition_hidden_dim
        self.transitions = nn.ModuleList(_mlp([d, h, d] if h else [d, d], RELU_GAIN) for _ in range(n - 1))
        self.reader_norms = nn.ModuleList(nn.RMSNorm(d) for _ in range(n))
        self.readers = nn.ModuleList(
            _mlp([d, *config.reader_hidden_dims, sum(module_to_c[p] for p in b)], 1.0) for b in self.blocks
        )

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        r: Tensor | int = 0
        for k, block in enumerate(self.blocks):
            r = r + self.proj_in[k](_cat([inputs[p] for p in block]))
            if k < len(self.blocks) - 1:
                r = r + _run_mlp(self.transitions[k], self.transition_norms[k](r))
            logits = _run_mlp(self.readers[k], self.reader_norms[k](r))
            for p, z in zip(block, logits.split([self.module_to_c[p] for p in block], dim=-1), strict=True):
                out[p] = z
        return out


class GlobalSharedMlpCiFn(nn.Module):
    """`global_shared_mlp`: one MLP (Linear+GELU per hidden width, then a Linear to Σ C) over the concatenation of
    every module's input, its output split into each module's C logits.

    Modules are concatenated in name order, as the reference does, so a checkpoint's columns mean the same modules
    whatever order module_info lists them in. Hidden layers use the relu gain and the logit head gain 1, like the
    other CI functions here.
    """

    def __init__(self, config: GlobalCiFnConfig, module_to_c: dict[str, int], input_dims: dict[str, int]) -> None:
        super().__init__()
        self.order = sorted(module_to_c)
        self.split = [module_to_c[p] for p in self.order]
        dims = [sum(input_dims[p] for p in self.order), *(config.hidden_dims or []), sum(self.split)]
        self.layers = _mlp(dims, 1.0)

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = _run_mlp(self.layers, _cat([inputs[p] for p in self.order]))
        return dict(zip(self.order, logits.split(self.split, dim=-1), strict=True))


def make_global_ci_fn(config: GlobalCiFnConfig, module_to_c: dict[str, int], input_dims: dict[str, int]) -> nn.Module:
    """The global CI function of `config.fn_type`."""
    if config.fn_type == "global_shared_mlp":
        return GlobalSharedMlpCiFn(config, module_to_c, input_dims)
    return GlobalReverseResidualCiFn(config, module_to_c, input_dims)


def _cat(xs: list[Tensor]) -> Tensor:
    return xs[0] if len(xs) == 1 else torch.cat(xs, dim=-1)
