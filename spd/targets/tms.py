"""Toy Model of Superposition targets: 5-2, 40-10 and their hidden-identity variants.

h = W x (linear1), optional fixed identity hidden layers, x̂ = ReLU(W^T h + b) (linear2, tied to linear1).
A trained target is only accepted after `feature_check` confirms every feature is represented: a
degenerate target would otherwise silently yield a "correct" decomposition of fewer features. The reference
asks output_i of the probe 0.75·e_i to be within 0.1 of 0.75, which fits 5-2 but not 40-10: superposition
shrinks every output of a trained 40-10 target (0.58-0.63), while a dropped feature gives ~0 on every
variant. So, like resid_mlp's check, it is one-sided: output_i must reach `feature_check_min_frac`·0.75
and every other output must stay at or below (1 - feature_check_min_frac)·0.75 (two features sharing one
direction would light each other up); one default serves every variant.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from spd.targets.config import TMSTargetConfig as TMSTargetConfig
from spd.targets.data import sparse_feature_batch
from spd.targets.seed_search import train_until_features_pass


class TiedTransposeLinear(nn.Module):
    """A Linear whose weight is another Linear's weight transposed (one parameter, no copy) plus its own bias."""

    def __init__(self, source: nn.Linear, bias_init: Literal["default", "zero"]) -> None:
        super().__init__()
        self._source = [source]  # a list so the source is not registered twice as a submodule
        d_out = source.in_features
        bias = torch.zeros(d_out)
        if bias_init == "default":
            bound = 1.0 / source.out_features**0.5
            bias.uniform_(-bound, bound)
        self.bias = nn.Parameter(bias)

    @property
    def weight(self) -> Tensor:
        return self._source[0].weight.T

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class TMSModel(nn.Module):
    """x -> linear1 -> identity hidden layers -> ReLU(linear2)."""

    def __init__(self, config: TMSTargetConfig) -> None:
        super().__init__()
        self.config = config
        self.linear1 = nn.Linear(config.n_features, config.n_hidden, bias=False)
        self.hidden_layers = nn.ModuleList()
        for _ in range(config.n_hidden_layers):
            layer = nn.Linear(config.n_hidden, config.n_hidden, bias=False)
            with torch.no_grad():
                layer.weight.copy_(torch.eye(config.n_hidden))
            layer.weight.requires_grad_(False)
            self.hidden_layers.append(layer)
        self.linear2 = TiedTransposeLinear(self.linear1, config.bias_init)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear1(x)
        for layer in self.hidden_layers:
            h = layer(h)
        return F.relu(self.linear2(h))

    # --- what SPD needs to know about this target --------------------------------------------------

    def sample_batch(self, batch_size: int, device: torch.device | str) -> Tensor:
        c = self.config
        return sparse_feature_batch(batch_size, c.n_features, c.feature_probability, device, c.data_generation_type)

    def default_module_info(self, C: int) -> list[tuple[str, int]]:
        return [("linear1", C), ("linear2", C)] + [(f"hidden_layers.{i}", C) for i in range(len(self.hidden_layers))]

    def tied_weights(self) -> list[tuple[str, str]]:
        return [("linear1", "linear2")]

    def probe_batch(self, device: torch.device | str) -> Tensor:
        """One-hot probe 0.75·I used by IdentityCIError."""
        return 0.75 * torch.eye(self.config.n_features, device=device)

    def expected_ci_patterns(self) -> dict[str, tuple[str, int]]:
        """Module -> ('identity', n) or ('dense', k): what a correct decomposition looks like on the probe."""
        n, m = self.config.n_features, self.config.n_hidden
        patterns = {"linear1": ("identity", n), "linear2": ("identity", n)}
        patterns.update({f"hidden_layers.{i}": ("dense", m) for i in range(len(self.hidden_layers))})
        return patterns

    def feature_weight_module(self) -> str:
        """The module whose columns are the feature directions (for MMCS / ML2R)."""
        return "linear1"


def feature_check(model: TMSModel, min_frac: float) -> list[int]:
    """Indices of features NOT represented: on input 0.75·e_i, output_i < min_frac·0.75 or some other
    output > (1 - min_frac)·0.75."""
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(model.probe_batch(device))  # row i: the outputs on 0.75·e_i
    own = out.diagonal()
    others = (out - torch.diag(own)).amax(dim=1)  # outputs are ReLUs (>= 0): the zeroed diagonal never wins
    return [
        i
        for i, (v, o) in enumerate(zip(own.tolist(), others.tolist(), strict=True))
        if v < min_frac * 0.75 or o > (1 - min_frac) * 0.75
    ]


def _train_once(config: TMSTargetConfig, seed: int, device: torch.device) -> tuple[TMSModel, float]:
    torch.manual_seed(seed)
    model = TMSModel(config).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    loss = torch.tensor(float("nan"))
    for _ in range(config.train_steps):
        x = model.sample_batch(config.train_batch_size, device)
        loss = ((model(x) - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, float(loss.detach())


def train_tms(config: TMSTargetConfig, device: torch.device | str = "cpu", log=print) -> tuple[TMSModel, dict]:
    """Train a TMS target, trying `seed_search` consecutive seeds until one represents every feature."""
    device = torch.device(device)
    return train_until_features_pass(
        lambda seed: _train_once(config, seed, device),
        lambda model: feature_check(model, config.feature_check_min_frac),
        range(config.seed, config.seed + config.seed_search),
        f"TMS {config.n_features}-{config.n_hidden} target",
        "raise `seed_search` or change `seed`, or lower `feature_check_min_frac`",
        log,
    )
