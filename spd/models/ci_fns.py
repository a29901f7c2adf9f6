"""Layerwise causal-importance functions.

Each maps one module's activations to pre-sigmoid CI logits z (... x C). The `mlp` kind is the
paper's: a tiny independent MLP per subcomponent reading only that subcomponent's activation
h_c = (x V)_c, so a subcomponent's importance is judged from how strongly its own direction is hit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from spd.models.config import CiFnType as CiFnType

RELU_GAIN = math.sqrt(2.0)


def _init_weight(shape: tuple[int, ...], fan_in: int, gain: float) -> nn.Parameter:
    """N(0, gain^2 / fan_in): relu gain for hidden layers, 1 for the logit head (as the reference)."""
    return nn.Parameter(torch.randn(shape) * (gain / math.sqrt(fan_in)))


class ParallelLinear(nn.Module):
    """C independent linear maps applied in parallel: (..., C, in) -> (..., C, out). W is (C, in, out)."""

    def __init__(self, C: int, d_in: int, d_out: int, gain: float) -> None:
        super().__init__()
        self.W = _init_weight((C, d_in, d_out), d_in, gain)
        self.b = nn.Parameter(torch.zeros(C, d_out))

    def forward(self, x: Tensor) -> Tensor:
        if self.W.shape[1] == 1:  # scalar input per subcomponent: an outer product, cheaper than einsum
            return torch.addcmul(self.b, x, self.W[:, 0, :])
        if self.W.shape[2] == 1:  # scalar output: a weighted sum (a batched matmul with N=1 is slow on CPU)
            return (x * self.W[:, :, 0]).sum(-1, keepdim=True) + self.b
        return torch.einsum("...ci,cio->...co", x, self.W) + self.b


class PlainLinear(nn.Module):
    """Linear layer with W stored (in, out) like the reference checkpoints."""

    def __init__(self, d_in: int, d_out: int, gain: float) -> None:
        super().__init__()
        self.W = _init_weight((d_in, d_out), d_in, gain)
        self.b = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.W + self.b


ZERO_ROW_SHARE = 0.5  # compute all-zero input rows once when at least this share of the rows is all zero


def _zero_rows_once(mlp: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """mlp(x) with every all-zero row of x computed once: exactly the same values and gradients (up to
    summation order), a fraction of the cost on sparse toy data.

    Why: in TMS about 77% of samples are all-zero (5 features, each active with probability 0.05), so their
    module inputs and component activations are exactly zero, and a per-row function maps them all to one
    row. The per-subcomponent MLPs are ~85% of a TMS training step on CPU. Skipped on accelerators (finding
    the rows needs a host sync, and the MLP is cheap there) and when too few rows are zero to pay back the
    gather and scatter.
    """
    rows = x.reshape(-1, x.shape[-1])
    if x.device.type != "cpu" or rows.shape[0] < 64:
        return mlp(x)
    nonzero = rows.ne(0).any(dim=-1)
    n_nonzero = int(nonzero.sum())
    if rows.shape[0] - n_nonzero < ZERO_ROW_SHARE * rows.shape[0]:
        return mlp(x)
    idx = nonzero.nonzero().squeeze(1)
    out = mlp(torch.cat([rows[idx], rows.new_zeros(1, rows.shape[-1])]))  # the zero row last
    shared = out[-1:].expand(rows.shape[0], *out.shape[1:])
    result = shared.index_copy(0, idx, out[:-1])  # differentiable in both: the zero row gets the rest's gradient
    return result.reshape(*x.shape[:-1], *out.shape[1:])


class MLPCiFn(nn.Module):
    """Per-subcomponent scalar MLP 1 -> hidden... -> 1 on h = xV (input: component activations)."""

    takes_component_acts = True

    def __init__(self, C: int, hidden_dims: list[int]) -> None:
        super().__init__()
        dims = [1, *hidden_dims, 1]
        self.layers = nn.ModuleList(
            ParallelLinear(C, a, b, RELU_GAIN if i < len(dims) - 2 else 1.0)
            for i, (a, b) in enumerate(itertools.pairwise(dims))
        )

    def forward(self, h: Tensor) -> Tensor:
        return _zero_rows_once(self._mlp, h)

    def _mlp(self, h: Tensor) -> Tensor:
        x = h.unsqueeze(-1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.gelu(x)
        return x.squeeze(-1)


class VectorMLPCiFn(nn.Module):
    """C separate MLPs d_in -> hidden... -> 1, each reading the whole module input x."""

    takes_component_acts = False

    def __init__(self, C: int, d_in: int, hidden_dims: list[int]) -> None:
        super().__init__()
        self.C = C
        dims = [d_in, *hidden_dims, 1]
        self.layers = nn.ModuleList(
            ParallelLinear(C, a, b, RELU_GAIN if i < len(dims) - 2 else 1.0)
            for i, (a, b) in enumerate(itertools.pairwise(dims))
        )

    def forward(self, x: Tensor) -> Tensor:
        return _zero_rows_once(self._mlp, x)

    def _mlp(self, x: Tensor) -> Tensor:
        first = self.layers[0]
        y = torch.einsum("...i,cio->...co", x, first.W) + first.b
        for layer in self.layers[1:]:
            y = layer(F.gelu(y))
        return y.squeeze(-1)


class SharedMLPCiFn(nn.Module):
    """One MLP per module d_in -> hidden... (GELU) -> C: cheap, the reference default for small LMs."""

    takes_component_acts = False

    def __init__(self, C: int, d_in: int, hidden_dims: list[int]) -> None:
        super().__init__()
        dims = [d_in, *hidden_dims, C]
        self.layers = nn.ModuleList(
            PlainLinear(a, b, RELU_GAIN if i < len(dims) - 2 else 1.0)
            for i, (a, b) in enumerate(itertools.pairwise(dims))
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.gelu(x)
        return x


def make_ci_fn(fn_type: CiFnType, C: int, d_in: int, hidden_dims: list[int], is_embedding: bool = False) -> nn.Module:
    """Build one module's CI function; embeddings only support `mlp` (their input is token ids)."""
    if is_embedding and fn_type != "mlp":
        raise ValueError(f"embedding modules only support the 'mlp' CI function, not {fn_type!r}")
    if fn_type == "mlp":
        return MLPCiFn(C, hidden_dims)
    if fn_type == "vector_mlp":
        return VectorMLPCiFn(C, d_in, hidden_dims)
    if fn_type == "shared_mlp":
        return SharedMLPCiFn(C, d_in, hidden_dims)
    raise ValueError(f"unknown CI function type {fn_type!r}")
