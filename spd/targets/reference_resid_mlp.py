"""The reference's residual-MLP target (goodfire-ai/spd `ResidMLP`), kept with its own parameter layout.

Why not spd/targets/resid_mlp.py: the reference learns a separate unembedding W_U, may give the MLPs biases
and a GELU, and stores W_E as a parameter; ours fixes W_U = W_E^T with ReLU MLPs and no biases. Decompositions
of it name `layers.<i>.mlp_in` / `layers.<i>.mlp_out`; this class loads its `resid_mlp.pth` as it is.

forward: r = x W_E; r = r + mlp_out(act(mlp_in(r))) per layer; out = r W_U.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn import functional as F


class ReferenceResidMLPConfig(BaseModel):
    """The reference's ResidMLPModelConfig."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["reference_resid_mlp"] = "reference_resid_mlp"
    n_features: int = Field(ge=1)
    d_embed: int = Field(ge=1)
    d_mlp: int = Field(ge=1)
    n_layers: int = Field(ge=1)
    act_fn_name: Literal["gelu", "relu"] = "relu"
    in_bias: bool
    out_bias: bool


class _MLP(nn.Module):
    def __init__(self, config: ReferenceResidMLPConfig) -> None:
        super().__init__()
        self.mlp_in = nn.Linear(config.d_embed, config.d_mlp, bias=config.in_bias)
        self.mlp_out = nn.Linear(config.d_mlp, config.d_embed, bias=config.out_bias)
        self.act = F.gelu if config.act_fn_name == "gelu" else F.relu

    def forward(self, r: Tensor) -> Tensor:
        return self.mlp_out(self.act(self.mlp_in(r)))


class ReferenceResidMLPModel(nn.Module):
    def __init__(self, config: ReferenceResidMLPConfig) -> None:
        super().__init__()
        self.config = config
        self.W_E = nn.Parameter(torch.zeros(config.n_features, config.d_embed))
        self.W_U = nn.Parameter(torch.zeros(config.d_embed, config.n_features))
        self.layers = nn.ModuleList(_MLP(config) for _ in range(config.n_layers))

    def forward(self, x: Tensor) -> Tensor:
        r = x @ self.W_E
        for layer in self.layers:
            r = r + layer(r)
        return r @ self.W_U
