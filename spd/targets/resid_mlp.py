"""Residual-MLP toy targets: sparse features computed in superposition by a few MLPs.

    r = x W_E            W_E: n_features x d_embed, random unit-norm rows, fixed (a buffer, never trained)
    r += mlp_out(ReLU(mlp_in(r)))   for each layer, no biases         (decomposed: layers.*.mlp_in / mlp_out)
    out = r W_Eᵀ

Task: x sparse (each feature on with probability p, value U[-1, 1]); label y = x + ReLU(c ⊙ x), c ≡ 1 by default.
The MLPs must compute n_features ReLUs with fewer neurons, so a trained target is accepted only when every
feature's ReLU is actually computed (`resid_mlp_feature_check`): on the probe 0.75·e_i the MLP part of output_i
must reach `feature_check_min_frac` of c_i·0.75. (With fewer neurons than features the MSE-optimal target
under-shoots every ReLU: the reference-sized 1-layer target gives 0.38-0.57 of 0.75, a skipped feature ~0.)
A target that skips features would give a decomposition of fewer features and an invalid benchmark.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spd.targets.config import ResidMLPTargetConfig as ResidMLPTargetConfig
from spd.targets.data import sparse_feature_batch
from spd.targets.seed_search import train_until_features_pass

RESID_MLP_PRESETS: dict[str, dict] = {
    "resid_mlp1": {"n_features": 100, "d_mlp": 50, "n_layers": 1, "train_steps": 1000},
    "resid_mlp2": {"n_features": 100, "d_mlp": 25, "n_layers": 2, "train_steps": 1000},
    "resid_mlp3": {"n_features": 102, "d_mlp": 17, "n_layers": 3, "train_steps": 10_000},
}


class ResidMLPLayer(nn.Module):
    def __init__(self, d_embed: int, d_mlp: int) -> None:
        super().__init__()
        self.mlp_in = nn.Linear(d_embed, d_mlp, bias=False)
        self.mlp_out = nn.Linear(d_mlp, d_embed, bias=False)

    def forward(self, r: Tensor) -> Tensor:
        return r + self.mlp_out(F.relu(self.mlp_in(r)))


class ResidMLPModel(nn.Module):
    """x -> W_E -> residual MLP layers -> W_Eᵀ."""

    def __init__(self, config: ResidMLPTargetConfig) -> None:
        super().__init__()
        self.config = config
        g = torch.Generator().manual_seed(config.seed)
        w_e = torch.randn(config.n_features, config.d_embed, generator=g)
        self.register_buffer("W_E", w_e / w_e.norm(dim=1, keepdim=True))
        self.register_buffer("label_coeffs", _label_coeffs(config))
        self.layers = nn.ModuleList(ResidMLPLayer(config.d_embed, config.d_mlp) for _ in range(config.n_layers))

    def forward(self, x: Tensor) -> Tensor:
        r = x @ self.W_E
        for layer in self.layers:
            r = layer(r)
        return r @ self.W_E.T

    def mlp_contribution(self, x: Tensor) -> Tensor:
        """Output minus the residual identity path: what the MLPs add, read out per feature."""
        return self(x) - (x @ self.W_E) @ self.W_E.T

    def labels(self, x: Tensor) -> Tensor:
        return x + F.relu(self.label_coeffs * x)

    # --- what SPD needs to know about this target --------------------------------------------------

    def sample_batch(self, batch_size: int, device: torch.device | str) -> Tensor:
        c = self.config
        return sparse_feature_batch(batch_size, c.n_features, c.feature_probability, device, value_range=(-1.0, 1.0))

    def default_module_info(self, C: int) -> list[tuple[str, int]]:
        return [(f"layers.{i}.{m}", C) for i in range(self.config.n_layers) for m in ("mlp_in", "mlp_out")]

    def probe_batch(self, device: torch.device | str) -> Tensor:
        """One-hot probe 0.75·I: each feature alone (the reference implementation's probe)."""
        return 0.75 * torch.eye(self.config.n_features, device=device)

    def expected_ci_patterns(self) -> dict[str, tuple[str, int]]:
        """1 layer: one mlp_in subcomponent per feature, mlp_out dense over the d_mlp neurons (the reference's pattern).

        Deeper models spread a feature's components over layers, which no per-module pattern captures: empty.
        """
        if self.config.n_layers != 1:
            return {}
        return {
            "layers.0.mlp_in": ("identity", self.config.n_features),
            "layers.0.mlp_out": ("dense", self.config.d_mlp),
        }


def _label_coeffs(config: ResidMLPTargetConfig) -> Tensor:
    if config.label_coeffs == "trivial":
        return torch.ones(config.n_features)
    g = torch.Generator().manual_seed(config.label_fn_seed)
    return 1.0 + torch.rand(config.n_features, generator=g)


def resid_mlp_feature_check(model: ResidMLPModel, min_frac: float) -> list[int]:
    """Features whose ReLU the MLPs do not compute: MLP part of output_i(0.75·e_i) < min_frac · c_i·0.75."""
    device = model.W_E.device
    with torch.no_grad():
        contrib = model.mlp_contribution(model.probe_batch(device)).diagonal()
    expected = model.label_coeffs * 0.75
    return [i for i, (v, e) in enumerate(zip(contrib.tolist(), expected.tolist(), strict=True)) if v < min_frac * e]


def _train_once(config: ResidMLPTargetConfig, seed: int, device: torch.device) -> tuple[ResidMLPModel, float]:
    model = ResidMLPModel(config.model_copy(update={"seed": seed})).to(device)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss = torch.tensor(float("nan"))
    for step in range(config.train_steps):
        for group in opt.param_groups:
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.train_steps))
        x = model.sample_batch(config.train_batch_size, device)
        loss = ((model(x) - model.labels(x)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, float(loss.detach())


def train_resid_mlp(
    config: ResidMLPTargetConfig, device: torch.device | str = "cpu", log=print
) -> tuple[ResidMLPModel, dict]:
    """Train a residual-MLP target, trying `seed_search` seeds until the MLPs compute every feature's ReLU."""
    device = torch.device(device)
    return train_until_features_pass(
        lambda seed: _train_once(config, seed, device),
        lambda model: resid_mlp_feature_check(model, config.feature_check_min_frac),
        range(config.seed, config.seed + config.seed_search),
        f"{config.n_layers}-layer resid_mlp target",
        "raise `seed_search`, `train_steps` or `d_mlp`, or lower `feature_check_min_frac`",
        log,
    )
