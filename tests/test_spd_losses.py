"""Exact-value tests of the SPD losses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spd.losses import (
    ci_masked_recon_loss,
    faithfulness_loss,
    importance_minimality_loss,
    stochastic_recon_layerwise_loss,
    stochastic_recon_loss,
    unmasked_recon_loss,
)
from spd.losses import stochastic_recon_layerwise as layerwise_module
from spd.models import ComponentModel, MaskInfo


def test_faithfulness_value() -> None:
    deltas = {"a": torch.tensor([[1.0, -1.0], [2.0, 0.0]]), "b": torch.tensor([[2.0, -2.0, 1.0]])}
    assert float(faithfulness_loss(deltas)) == pytest.approx(15 / 7)


@pytest.mark.parametrize(
    ("ci", "p", "beta", "expected"),
    [
        ({"a": [[1.0, 2.0, 3.0]], "b": [[0.5, 1.5]]}, 1.0, 0.0, 8.0),
        ({"a": [[2.0, 3.0]]}, 2.0, 0.0, 13.0),
        ({"a": [[1.0, 2.0], [3.0, 4.0]]}, 1.0, 0.0, 5.0),
        ({"a": [[1.0, 2.0], [3.0, 4.0]]}, 1.0, 1.0, 2 * (1 + math.log2(5)) + 3 * (1 + math.log2(7))),
    ],
)
def test_importance_minimality_values(ci: dict, p: float, beta: float, expected: float) -> None:
    tensors = {k: torch.tensor(v) for k, v in ci.items()}
    assert float(importance_minimality_loss(tensors, p, eps=0.0, beta=beta)) == pytest.approx(expected)


def test_importance_minimality_p_annealing() -> None:
    loss = importance_minimality_loss(
        {"a": torch.tensor([[2.0]])},
        pnorm=2.0,
        current_frac=0.25,
        eps=0.0,
        p_anneal_start_frac=0.0,
        p_anneal_final_p=1.0,
        p_anneal_end_frac=0.5,
    )
    assert float(loss) == pytest.approx(2**1.5)


class OneLayer(nn.Module):
    def __init__(self, d_in: int = 3, d_out: int = 3) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4, bias=False)
        self.b = nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_ci_masked_recon_equals_hand_computation() -> None:
    torch.manual_seed(0)
    target = OneLayer()
    model = ComponentModel(target, {"lin": 4})
    x, g = torch.randn(5, 3), torch.rand(5, 4)
    out = target(x)
    comp = model.components("lin")
    expected = ((((x @ comp.V) * g) @ comp.U - out) ** 2).mean()
    got = ci_masked_recon_loss(model, x, out, {"lin": g}).item()
    assert got == pytest.approx(expected.item(), rel=1e-6)


def test_layerwise_with_mocked_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    target = TwoLayer()
    model = ComponentModel(target, {"a": 2, "b": 3})
    x = torch.randn(4, 3)
    out = target(x)
    samples = [
        {"a": MaskInfo(mask=torch.rand(4, 2)), "b": MaskInfo(mask=torch.rand(4, 3))},
        {"a": MaskInfo(mask=torch.rand(4, 2)), "b": MaskInfo(mask=torch.rand(4, 3))},
    ]
    it = iter(samples)
    monkeypatch.setattr(layerwise_module.mask_lib, "stochastic_mask_infos", lambda *a, **k: next(it))
    loss = stochastic_recon_layerwise_loss(model, x, out, {}, None, n_mask_samples=2)
    ca, cb = model.components("a"), model.components("b")
    total = 0.0
    for s in samples:
        total += ((target.b(ca(x, s["a"].mask)) - out) ** 2).sum()
        total += ((cb(target.a(x), s["b"].mask) - out) ** 2).sum()
    assert loss.item() == pytest.approx(total.item() / (2 * 2 * out.numel()), rel=1e-6)


def test_single_layer_layerwise_equals_full() -> None:
    torch.manual_seed(0)
    model = ComponentModel(OneLayer(), {"lin": 4})
    x = torch.randn(6, 3)
    out, ci = model.target_model(x), {"lin": torch.rand(6, 4)}
    deltas = model.deltas()
    torch.manual_seed(5)
    full = stochastic_recon_loss(model, x, out, ci, deltas)
    torch.manual_seed(5)
    layerwise = stochastic_recon_layerwise_loss(model, x, out, ci, deltas)
    assert full.item() == pytest.approx(layerwise.item())


def _perfect(model: ComponentModel) -> None:
    with torch.no_grad():
        comp = model.components("lin")
        comp.V.copy_(model.target_weight("lin").T)
        comp.U.copy_(torch.eye(3))


def test_perfect_init_reconstructs_and_random_does_not() -> None:
    torch.manual_seed(0)
    model = ComponentModel(OneLayer(), {"lin": 3})
    x = torch.randn(32, 3)
    out, ones = model.target_model(x), {"lin": torch.ones(32, 3)}
    random_losses = [
        stochastic_recon_loss(model, x, out, ones, None),
        ci_masked_recon_loss(model, x, out, ones),
        unmasked_recon_loss(model, x, out, ones),
    ]
    assert all(v.item() > 0.01 for v in random_losses)
    _perfect(model)
    deltas = model.deltas()
    perfect = [
        stochastic_recon_loss(model, x, out, ones, deltas),
        stochastic_recon_layerwise_loss(model, x, out, ones, deltas),
        ci_masked_recon_loss(model, x, out, ones),
        unmasked_recon_loss(model, x, out, ones),
        faithfulness_loss(deltas),
    ]
    assert all(v.item() < 1e-5 for v in perfect)


def test_kl_divergence_zero_for_identical_logits() -> None:
    from spd.losses import divergence_sum_and_count

    logits = torch.randn(2, 5, 7)
    s, n = divergence_sum_and_count(logits, logits, "kl")
    assert float(s) == pytest.approx(0.0, abs=1e-5) and n == 10
