"""The reference's TMS target (goodfire-ai/spd `TMSModel`), kept with its own parameter layout.

Why not spd/targets/tms.py: ours ties linear2 to linear1 by computing linear2's weight, so its state dict has
no `linear2.weight`; the reference stores both (its linear2 weight is linear1's transposed storage when
tied, or a trained weight of its own when not) and decompositions of it name `linear2`. This class loads
the reference's `tms.pth` (and the `target_model.*` part of its SPD checkpoints) as it is.

forward: h = linear1(x); h = hidden_layer(h) for each hidden layer (no bias); out = ReLU(linear2(h)).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn import functional as F


class ReferenceTMSConfig(BaseModel):
    """The reference's TMSModelConfig (its `device` field is accepted and ignored: models go where we put them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["reference_tms"] = "reference_tms"
    n_features: int = Field(ge=1)
    n_hidden: int = Field(ge=1)
    n_hidden_layers: int = Field(0, ge=0)
    tied_weights: bool = False
    init_bias_to_zero: bool = False
    device: str | None = Field(None, description="Ignored (recorded by the reference).")


class ReferenceTMSModel(nn.Module):
    def __init__(self, config: ReferenceTMSConfig) -> None:
        super().__init__()
        self.config = config
        self.linear1 = nn.Linear(config.n_features, config.n_hidden, bias=False)
        self.linear2 = nn.Linear(config.n_hidden, config.n_features, bias=True)
        if config.init_bias_to_zero:
            nn.init.zeros_(self.linear2.bias)
        self.hidden_layers = nn.ModuleList(
            nn.Linear(config.n_hidden, config.n_hidden, bias=False) for _ in range(config.n_hidden_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear1(x)
        for layer in self.hidden_layers:
            h = layer(h)
        return F.relu(self.linear2(h))

    def tied_weights(self) -> list[tuple[str, str]]:
        """Components tied like the weights (the reference's TMS decomposition does the same)."""
        return [("linear1", "linear2")] if self.config.tied_weights else []

    def check_tied(self, atol: float = 0.0) -> None:
        """A tied target must hold linear2.weight == linear1.weight^T (what the reference trained)."""
        if self.config.tied_weights and not torch.allclose(self.linear2.weight, self.linear1.weight.T, atol=atol):
            raise ValueError("reference TMS target with tied_weights: linear2.weight is not linear1.weight^T")
