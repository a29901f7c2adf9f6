"""Exact-value tests of the PGD, subset and CI-masked layerwise reconstruction losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spd.losses import ci_masked_recon as ci_masked_module
from spd.losses import (
    ci_masked_recon_layerwise_loss,
    ci_masked_recon_loss,
    pgd_recon_layerwise_loss,
    pgd_recon_loss,
    stochastic_recon_loss,
)
from spd.losses.pgd import PGDSettings, init_sources, pgd_sources
from spd.models import ComponentModel
from spd.train import SPDConfig
from spd.train.config import RoutingConfig


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4, bias=False)
        self.b = nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def _perfect(model: ComponentModel) -> None:
    """V = Wᵀ, U = I: the components reproduce the target exactly when every mask is 1."""
    with torch.no_grad():
        for path, C in model.module_to_c.items():
            comp = model.components(path)
            comp.V.copy_(model.target_weight(path).T)
            comp.U.copy_(torch.eye(C))


def test_pgd_ascent_drives_sources_to_the_worst_corner() -> None:
    """With V = Wᵀ, U = I, g = 0.5 and no δ, the loss falls as s rises, so one signed step of size 1 sets s = 0:
    the PGD loss is then exactly the forward with every mask 0.5 (the maximum over s ∈ [0, 1])."""
    torch.manual_seed(0)
    target = TwoLayer()
    model = ComponentModel(target, {"a": 4, "b": 2})
    _perfect(model)
    x = torch.randn(8, 3)
    out = target(x)
    half = {"a": torch.full((8, 4), 0.5), "b": torch.full((8, 2), 0.5)}
    expected = ((target.b(target.a(x) * 0.5) * 0.5 - out) ** 2).mean()
    got = pgd_recon_loss(model, x, out, half, None, PGDSettings(init="random", step_size=1.0, n_steps=1))
    assert float(got.detach()) == pytest.approx(float(expected), rel=1e-5)
    # the adversarial corner is at least as bad as any random source draw
    assert float(got.detach()) >= float(stochastic_recon_loss(model, x, out, half, None).detach())


def test_pgd_sources_are_reinitialised_every_call_and_stay_in_unit_interval() -> None:
    torch.manual_seed(0)
    ci = {"a": torch.rand(5, 4)}
    seen = []

    def objective(c, d, s):
        seen.append(s["a"].detach().clone())
        return (s["a"] * torch.linspace(-1, 1, 4)).sum()

    first = pgd_sources(objective, ci, None, "random", 0.3, 3, "unique_per_datapoint")
    second = pgd_sources(objective, ci, None, "random", 0.3, 3, "unique_per_datapoint")
    assert not torch.equal(seen[0], seen[3])  # a fresh random init per call, not a persistent source
    for s in (first, second):
        assert s["a"].shape == (5, 4) and not s["a"].requires_grad
        assert float(s["a"].min()) >= 0.0 and float(s["a"].max()) <= 1.0
    # gradient sign is +1 for the last two entries and -1 for the first two: they move up / down by 0.3 per step
    start = seen[0]
    assert torch.allclose(first["a"][:, 2:], (start[:, 2:] + 0.9).clamp(0, 1))
    assert torch.allclose(first["a"][:, :2], (start[:, :2] - 0.9).clamp(0, 1))


def test_source_shapes_follow_scope_and_delta() -> None:
    ci = {"a": torch.rand(2, 3, 4)}
    assert init_sources(ci, True, "ones", "shared_across_batch")["a"].shape == (1, 1, 5)
    assert init_sources(ci, False, "zeroes", "unique_per_datapoint")["a"].shape == (2, 3, 4)


def test_perfect_init_pgd_reconstructs_and_random_does_not() -> None:
    torch.manual_seed(0)
    target = TwoLayer()
    model = ComponentModel(target, {"a": 4, "b": 2})
    x = torch.randn(16, 3)
    out = target(x)
    ones = {"a": torch.ones(16, 4), "b": torch.ones(16, 2)}
    assert float(pgd_recon_loss(model, x, out, ones, None).detach()) > 0.01
    _perfect(model)
    deltas = model.deltas()
    for loss in (
        pgd_recon_loss(model, x, out, ones, deltas, PGDSettings(n_steps=3, step_size=0.1)),
        pgd_recon_loss(model, x, out, ones, deltas, routing="uniform_k_subset"),
        pgd_recon_layerwise_loss(model, x, out, ones, deltas),
        ci_masked_recon_layerwise_loss(model, x, out, ones),
    ):
        assert loss.item() < 1e-5


def test_layerwise_pgd_and_ci_equal_full_for_a_single_module() -> None:
    torch.manual_seed(0)
    target = TwoLayer()
    model = ComponentModel(target, {"a": 4})
    x = torch.randn(6, 3)
    out, ci = target(x), {"a": torch.rand(6, 4)}
    assert ci_masked_recon_layerwise_loss(model, x, out, ci).item() == pytest.approx(
        ci_masked_recon_loss(model, x, out, ci).item()
    )
    torch.manual_seed(3)
    full = pgd_recon_loss(model, x, out, ci, model.deltas(), PGDSettings(n_steps=2, step_size=0.2))
    torch.manual_seed(3)
    layerwise = pgd_recon_layerwise_loss(model, x, out, ci, model.deltas(), PGDSettings(n_steps=2, step_size=0.2))
    assert full.item() == pytest.approx(layerwise.item())


def test_ci_masked_layerwise_is_the_mean_of_one_module_passes() -> None:
    torch.manual_seed(0)
    target = TwoLayer()
    model = ComponentModel(target, {"a": 2, "b": 3})
    x = torch.randn(4, 3)
    out = target(x)
    ci = {"a": torch.rand(4, 2), "b": torch.rand(4, 3)}
    ca, cb = model.components("a"), model.components("b")
    expected = ((target.b(ca(x, ci["a"])) - out) ** 2).sum() + ((cb(target.a(x), ci["b"]) - out) ** 2).sum()
    got = ci_masked_recon_layerwise_loss(model, x, out, ci)
    assert got.item() == pytest.approx(expected.item() / (2 * out.numel()), rel=1e-6)


def test_subset_unrouted_rows_add_zero_loss_but_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows 0-1 routed through both modules, rows 2-3 through none: the loss is the routed rows' squared error
    divided by ALL rows' elements, as in the reference implementation. CI masks make the value deterministic."""
    torch.manual_seed(0)
    target = TwoLayer()
    model = ComponentModel(target, {"a": 2, "b": 3})
    x = torch.randn(4, 3)
    out = target(x)
    ci = {"a": torch.rand(4, 2), "b": torch.rand(4, 3)}
    rows = torch.tensor([True, True, False, False])
    monkeypatch.setattr(ci_masked_module, "route", lambda routing, ci: {"a": rows, "b": rows})
    got = ci_masked_recon_loss(model, x, out, ci, routing="uniform_k_subset")
    ca, cb = model.components("a"), model.components("b")
    routed_sq = ((cb(ca(x, ci["a"]), ci["b"]) - out)[:2] ** 2).sum()
    assert got.item() == pytest.approx(routed_sq.item() / out.numel(), rel=1e-6)


def test_subset_routing_resampled_and_configured() -> None:
    torch.manual_seed(0)
    target = TwoLayer()
    model = ComponentModel(target, {"a": 2, "b": 3})
    x = torch.randn(64, 3)
    out = target(x)
    ci = {"a": torch.rand(64, 2), "b": torch.rand(64, 3)}
    values = {stochastic_recon_loss(model, x, out, ci, None, routing="uniform_k_subset").item() for _ in range(3)}
    assert len(values) == 3
    never = RoutingConfig(type="static_probability", p=1e-9)
    assert ci_masked_recon_loss(model, x, out, ci, routing=never).item() == 0.0  # nothing routed: target output


def test_new_losses_parse_and_train_a_few_steps(tmp_path) -> None:
    """Every new loss is accepted by the config and trains TMS 5-2 for a few steps without error."""
    from spd.targets import TMSTargetConfig, build_target
    from spd.train import decompose

    cfg = SPDConfig(
        default_C=6,
        steps=4,
        batch_size=32,
        eval_freq=4,
        n_eval_steps=1,
        faithfulness_warmup_steps=2,
        losses=[
            {"classname": "ImportanceMinimalityLoss", "coeff": 1e-3},
            {"classname": "StochasticReconSubsetLoss", "coeff": 1.0, "routing": {"type": "uniform_k_subset"}},
            {"classname": "CIMaskedReconSubsetLoss", "coeff": 1.0},
            {"classname": "CIMaskedReconLayerwiseLoss", "coeff": 1.0},
            {"classname": "PGDReconLoss", "coeff": 1.0, "n_steps": 2, "step_size": 0.5},
            {"classname": "PGDReconSubsetLoss", "coeff": 1.0, "routing": {"type": "static_probability", "p": 0.5}},
            {"classname": "PGDReconLayerwiseLoss", "coeff": 1.0, "mask_scope": "unique_per_datapoint"},
        ],
    )
    tc = TMSTargetConfig(n_features=5, n_hidden=2, train_steps=0)  # untrained is fine: the losses only need to run
    summary = decompose(build_target(tc), tc, cfg, tmp_path, seed=0, log=lambda m: None)
    for name in ("StochasticReconSubsetLoss", "PGDReconLoss", "PGDReconSubsetLoss", "PGDReconLayerwiseLoss"):
        assert summary["metrics"][f"eval/loss/{name}"] > 0
