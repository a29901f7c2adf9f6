"""Rank-one subcomponents of one weight matrix.

A Linear weight W (d_out x d_in) is re-parameterised as the sum of C rank-one matrices u_c v_c^T,
stored as V (d_in x C) and U (C x d_out) so that the "component activations" h = x V are one matmul.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LinearComponents(nn.Module):
    """C rank-one subcomponents of a linear map; the module's bias (if any) is a frozen buffer."""

    def __init__(self, d_in: int, d_out: int, C: int, bias: Tensor | None = None) -> None:
        super().__init__()
        self.d_in, self.d_out, self.C = d_in, d_out, C
        # std = 1/sqrt(fan): keeps h = xV and the summed output at the scale of the input.
        self.V = nn.Parameter(torch.randn(d_in, C) / math.sqrt(d_in))
        self.U = nn.Parameter(torch.randn(C, d_out) / math.sqrt(C))
        if bias is not None:
            self.register_buffer("bias", bias.detach().clone())
        else:
            self.bias = None

    @property
    def weight(self) -> Tensor:
        """Summed weight W' = (V U)^T in the target's (d_out x d_in) layout."""
        return (self.V @ self.U).T

    def component_acts(self, x: Tensor) -> Tensor:
        """h = x V (... x C): how strongly each subcomponent's read direction is hit."""
        return x @ self.V

    def forward(
        self, x: Tensor, mask: Tensor | None = None, delta: Tensor | None = None, delta_mask: Tensor | None = None
    ) -> Tensor:
        """(h * mask) U  [+ delta_mask * x Δ^T]  [+ bias]. The bias is never masked nor trained."""
        h = self.component_acts(x)
        if mask is not None:
            h = h * mask
        out = h @ self.U
        if delta is not None:
            delta_out = x @ delta.T
            out = out + (delta_out if delta_mask is None else delta_mask.unsqueeze(-1) * delta_out)
        if self.bias is not None:
            out = out + self.bias
        return out


class EmbeddingComponents(nn.Module):
    """C rank-one subcomponents of an embedding table (vocab x d); inputs are token ids."""

    def __init__(self, vocab_size: int, d_embed: int, C: int) -> None:
        super().__init__()
        self.vocab_size, self.d_embed, self.C = vocab_size, d_embed, C
        self.V = nn.Parameter(torch.randn(vocab_size, C) / math.sqrt(vocab_size))
        self.U = nn.Parameter(torch.randn(C, d_embed) / math.sqrt(C))
        self.bias = None

    @property
    def weight(self) -> Tensor:
        """Summed table V U (vocab x d), the embedding's own layout (no transpose)."""
        return self.V @ self.U

    def component_acts(self, tokens: Tensor) -> Tensor:
        return self.V[tokens]

    def forward(
        self, tokens: Tensor, mask: Tensor | None = None, delta: Tensor | None = None, delta_mask: Tensor | None = None
    ) -> Tensor:
        h = self.component_acts(tokens)
        if mask is not None:
            h = h * mask
        out = h @ self.U
        if delta is not None:
            delta_out = delta[tokens]
            out = out + (delta_out if delta_mask is None else delta_mask.unsqueeze(-1) * delta_out)
        return out


Components = LinearComponents | EmbeddingComponents


def tie_transposed(source: LinearComponents, dest: LinearComponents) -> None:
    """Make dest's U, V the transposes of source's V, U as shared storage (TMS linear2 = linear1^T).

    Like the reference, both parameter handles stay in the optimizer (two Adam updates per step on one
    storage); the reference's published numbers were obtained that way.
    """
    if (dest.d_in, dest.d_out, dest.C) != (source.d_out, source.d_in, source.C):
        raise ValueError("tied components need transposed shapes and the same C")
    dest.U = nn.Parameter(source.V.data.T)
    dest.V = nn.Parameter(source.U.data.T)
