"""Persistent PGD (scopes, persistence, ascent, clamping, routing) and hidden-activation reconstruction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spd.losses.hidden_acts_recon import ci_hidden_acts_recon_loss, hidden_acts_recon, stochastic_hidden_acts_recon_loss
from spd.losses.persistent_pgd import (
    PersistentPGDConfig,
    PersistentPGDState,
    PPGDScope,
    ppgd_recon_loss,
    ppgd_warmup,
)
from spd.models import ComponentModel
from spd.models.masks import MaskInfo
from spd.models.routing import uniform_k_subset_routing


class TwoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4, bias=False)
        self.b = nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _model(C: int = 5) -> ComponentModel:
    torch.manual_seed(0)
    return ComponentModel(TwoLinear(), {"a": C, "b": C}, ci_fn_type="shared_mlp", ci_hidden_dims=[])


@pytest.mark.parametrize(
    ("scope", "shape"),
    [
        ({"type": "single_mask"}, (1, 1, 6)),
        ({"type": "broadcast_across_batch"}, (1, 7, 6)),
        ({"type": "repeat_across_batch", "n_sources": 2}, (2, 7, 6)),
        ({"type": "per_batch_per_position"}, (4, 7, 6)),
    ],
)
def test_scope_shapes_and_expansion(scope: dict, shape: tuple) -> None:
    state = PersistentPGDState({"a": 5}, (4, 7), PersistentPGDConfig(scope=scope), use_delta_component=True)
    s = state.sources_by_module["a"]
    assert tuple(s.shape) == shape and s.min() >= 0 and s.max() <= 1
    e = state.expanded("a")
    assert e.shape == (4, 7, 6)
    if scope["type"] == "repeat_across_batch":
        assert torch.equal(e[0], e[2]) and torch.equal(e[1], e[3]) and not torch.equal(e[0], e[1])
    no_delta = PersistentPGDState({"a": 5}, (4, 7), PersistentPGDConfig(scope=scope), use_delta_component=False)
    assert no_delta.sources_by_module["a"].shape[-1] == 5


def test_scope_validation() -> None:
    with pytest.raises(ValueError):
        PPGDScope(type="repeat_across_batch")
    with pytest.raises(ValueError, match="divide"):
        PersistentPGDState({"a": 5}, (5, 7), PersistentPGDConfig(scope={"type": "repeat_across_batch", "n_sources": 2}))


def test_mask_is_g_plus_one_minus_g_times_source() -> None:
    state = PersistentPGDState({"a": 2}, (1,), PersistentPGDConfig(), use_delta_component=True)
    with torch.no_grad():
        state.sources_by_module["a"].copy_(torch.tensor([[0.3, 0.5, 0.25]]))
    g = torch.tensor([[0.8, 0.0]])
    info = state.mask_infos({"a": g}, {"a": torch.zeros(4, 3)})["a"]
    assert torch.allclose(info.mask, torch.tensor([[0.86, 0.5]]))
    assert torch.allclose(info.delta_mask, torch.tensor([0.25]))


@pytest.mark.parametrize("opt", ["sign", "adam"])
def test_sources_persist_ascend_and_stay_in_unit_interval(opt: str) -> None:
    model = _model()
    x = torch.randn(8, 3)
    target_out, acts = model.forward_with_inputs(x)
    ci = {p: torch.zeros(8, 5) for p in acts}  # g = 0: the masks are the sources themselves
    cfg = PersistentPGDConfig(
        scope={"type": "single_mask"},
        optimizer={"type": opt, "lr_schedule": {"start_val": 0.05, "fn_type": "constant", "final_val_frac": 1.0}},
    )
    state = PersistentPGDState(model.module_to_c, (8,), cfg, use_delta_component=False)
    losses, before = [], [s.clone() for s in state.sources()]
    for step in range(30):
        loss = ppgd_recon_loss(model, x, target_out, ci, None, state)
        losses.append(float(loss.detach()))
        state.update(torch.autograd.grad(loss, state.sources()), step, 30)
        for s in state.sources():
            assert s.min().item() >= 0.0 and s.max().item() <= 1.0
    assert losses[-1] > losses[0]  # gradient ascent on the reconstruction loss
    assert any(not torch.equal(a, b) for a, b in zip(before, state.sources(), strict=True))  # sources persisted
    assert state.lr(0, 30) == pytest.approx(0.05)


def test_lr_schedule_and_warmup_steps() -> None:
    model = _model()
    x = torch.randn(4, 3)
    target_out, acts = model.forward_with_inputs(x)
    ci = {p: torch.zeros(4, 5) for p in acts}
    cfg = PersistentPGDConfig(
        optimizer={"type": "sign", "lr_schedule": {"start_val": 1.0, "fn_type": "linear", "final_val_frac": 0.0}},
        n_warmup_steps=3,
    )
    state = PersistentPGDState(model.module_to_c, (4,), cfg, use_delta_component=False)
    assert state.lr(0, 11) == 1.0 and state.lr(10, 11) == 0.0 and state.lr(5, 11) == pytest.approx(0.5)
    before = [s.clone() for s in state.sources()]
    ppgd_warmup(model, x, target_out, ci, None, state, 0, 11)
    assert state._t == 3 and any(not torch.equal(a, b) for a, b in zip(before, state.sources(), strict=True))
    # lr 1 sign steps push every source with a non-zero gradient to 0 or 1
    s = state.sources_by_module["a"]
    assert bool(((s == 0) | (s == 1)).any())


def test_subset_routing_unrouted_positions_contribute_zero() -> None:
    torch.manual_seed(1)
    routes = uniform_k_subset_routing(["a", "b", "c"], (1000,))
    n_routed = sum(r.long() for r in routes.values())
    assert n_routed.min() >= 1 and n_routed.max() <= 3  # k in 1..L, at least one module per position
    model = _model()
    x = torch.randn(6, 3)
    target_out, acts = model.forward_with_inputs(x)
    masks = {p: MaskInfo(mask=torch.rand(6, 5), routing=torch.zeros(6, dtype=torch.bool)) for p in acts}
    assert torch.allclose(model(x, masks), target_out)  # nothing routed: the target output
    routing = torch.tensor([True, False, True, False, False, False])
    masks = {p: MaskInfo(mask=torch.rand(6, 5), routing=routing) for p in acts}
    out = model(x, masks)
    assert torch.allclose(out[~routing], target_out[~routing])
    state = PersistentPGDState(model.module_to_c, (6,), PersistentPGDConfig(), use_delta_component=False)
    ci = {p: torch.zeros(6, 5) for p in acts}
    assert ppgd_recon_loss(model, x, target_out, ci, None, state, routing="uniform_k_subset").item() >= 0


def test_hidden_acts_recon_exact_value() -> None:
    model = _model(C=2)
    x = torch.randn(5, 3)
    with torch.no_grad():
        _, target_outputs = model.forward_with_outputs(x)
    g = {p: torch.full((5, 2), 0.5) for p in model.module_to_c}
    infos = {p: MaskInfo(mask=m) for p, m in g.items()}
    loss, per = hidden_acts_recon(model, x, infos)
    # by hand: a's masked output, then b sees relu of it
    ca, cb = model.components("a"), model.components("b")
    out_a = (x @ ca.V * 0.5) @ ca.U
    out_b = (torch.relu(out_a) @ cb.V * 0.5) @ cb.U
    sq_a = ((out_a - target_outputs["a"]) ** 2).sum()
    sq_b = ((out_b - target_outputs["b"]) ** 2).sum()
    assert loss.item() == pytest.approx(((sq_a + sq_b) / (20 + 10)).item(), rel=1e-5)
    assert per["a"] == pytest.approx((sq_a / 20).item(), rel=1e-5)
    assert ci_hidden_acts_recon_loss(model, x, g).item() == pytest.approx(loss.item(), rel=1e-5)
    # perfect components (V = Wᵀ, U = I) and g = 1: zero stochastic loss even with the δ term
    perfect = ComponentModel(model.target_model, {"a": 4, "b": 2}, ci_fn_type="shared_mlp", ci_hidden_dims=[])
    for p in ("a", "b"):
        perfect.components(p).V.data = model.target_weight(p).T.clone()
        perfect.components(p).U.data = torch.eye(perfect.module_to_c[p])
    ones = {p: torch.ones(5, c) for p, c in perfect.module_to_c.items()}
    assert stochastic_hidden_acts_recon_loss(perfect, x, ones, perfect.deltas()).item() < 1e-10
