"""Options that bring SPD to parity with the reference (issue 24, item 3): swish_hard, global_shared_mlp,
sigmoid-parameterised persistent PGD sources, and PPGD state in checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from spd.losses.persistent_pgd import PersistentPGDConfig, PersistentPGDState
from spd.models import ComponentModel
from spd.models.checkpoint import load_ppgd_state, save_ppgd_state
from spd.models.global_ci import GlobalCiFnConfig, GlobalSharedMlpCiFn
from spd.models.sigmoids import get_sigmoids, swish_hard_sigmoid
from spd.targets import TMSModel, TMSTargetConfig
from spd.train import Decomposer, SPDConfig
from spd.train.config import PersistentPGDReconLossConfig, StochasticReconLossConfig
from tests.test_spd_ppgd_hidden import TwoLinear

# --- swish_hard ---------------------------------------------------------------------------------------------


def test_swish_hard_values_and_gradient() -> None:
    def swish(x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(10.0 * x)

    z = torch.tensor([-3.0, -0.2, 0.0, 0.5, 1.0, 1.2, 4.0], dtype=torch.float64, requires_grad=True)
    y = swish_hard_sigmoid(z)
    assert torch.allclose(y, swish(z) - swish(z - 1))
    assert y[3].item() == pytest.approx(0.5, abs=1e-12)  # symmetric about (0.5, 0.5)
    assert y[0].item() == pytest.approx(0.0, abs=1e-10) and y[-1].item() == pytest.approx(1.0, abs=1e-10)
    assert y[2].item() == pytest.approx(-swish(torch.tensor(-1.0, dtype=torch.float64)).item())
    (grad,) = torch.autograd.grad(y.sum(), z)
    assert grad[1] != 0 and grad[5] != 0  # outside [0, 1] the clamps have no gradient; this one still does
    lower, upper = get_sigmoids("swish_hard")
    assert lower is swish_hard_sigmoid and upper is swish_hard_sigmoid
    torch.manual_seed(0)
    model = ComponentModel(TwoLinear(), {"a": 3, "b": 2}, sigmoid_type="swish_hard")
    _, acts = model.forward_with_inputs(torch.randn(5, 3))
    ci = model.causal_importances(acts)
    for p in ("a", "b"):
        assert torch.equal(ci.lower_leaky[p], swish_hard_sigmoid(ci.pre_sigmoid[p]))
    assert SPDConfig(sigmoid_type="swish_hard").sigmoid_type == "swish_hard"


# --- global_shared_mlp --------------------------------------------------------------------------------------


def test_global_shared_mlp_reads_every_module_in_name_order() -> None:
    cfg = GlobalCiFnConfig(fn_type="global_shared_mlp", hidden_dims=[5])
    torch.manual_seed(0)
    fn = GlobalSharedMlpCiFn(cfg, {"b": 2, "a": 3}, {"b": 4, "a": 3})
    assert fn.order == ["a", "b"] and [tuple(layer.W.shape) for layer in fn.layers] == [(7, 5), (5, 5)]
    xa, xb = torch.randn(6, 3), torch.randn(6, 4, requires_grad=True)
    out = fn({"a": xa, "b": xb})
    h = torch.nn.functional.gelu(torch.cat([xa, xb], -1) @ fn.layers[0].W + fn.layers[0].b)
    logits = h @ fn.layers[1].W + fn.layers[1].b
    assert torch.allclose(out["a"], logits[:, :3]) and torch.allclose(out["b"], logits[:, 3:])
    (g,) = torch.autograd.grad(out["a"].sum(), xb)  # a's importances depend on b's input
    assert g.abs().sum() > 0
    linear_only = GlobalSharedMlpCiFn(GlobalCiFnConfig(fn_type="global_shared_mlp", hidden_dims=[]), {"a": 3}, {"a": 3})
    assert len(linear_only.layers) == 1
    model = ComponentModel(TwoLinear(), {"a": 3, "b": 2}, global_ci=cfg)
    _, acts = model.forward_with_inputs(torch.randn(5, 3))
    logits = model.ci_logits(acts)
    assert logits["a"].shape == (5, 3) and logits["b"].shape == (5, 2)
    assert SPDConfig(
        ci_fn={"mode": "global", "fn_type": "global_shared_mlp", "hidden_dims": [8]}
    ).ci_fn.hidden_dims == [8]


def test_global_config_fields_belong_to_their_kind() -> None:
    with pytest.raises(ValidationError, match="hidden_dims"):
        GlobalCiFnConfig(fn_type="global_shared_mlp")
    with pytest.raises(ValidationError, match="global_reverse_residual"):
        GlobalCiFnConfig(fn_type="global_shared_mlp", hidden_dims=[4], d_resid_ci_fn=8)
    with pytest.raises(ValidationError, match="d_resid_ci_fn"):
        GlobalCiFnConfig(block_groups=[{"name": "x", "patterns": ["*"]}])
    with pytest.raises(ValidationError, match="hidden_dims"):
        GlobalCiFnConfig(d_resid_ci_fn=8, block_groups=[{"name": "x", "patterns": ["*"]}], hidden_dims=[4])


# --- persistent PGD: sigmoid parameterisation, state round trip ---------------------------------------------


def test_sigmoid_parameterised_sources_are_unbounded_and_read_through_sigmoid() -> None:
    torch.manual_seed(0)
    cfg = PersistentPGDConfig(use_sigmoid_parameterization=True, optimizer={"type": "sign"})
    state = PersistentPGDState({"a": 50}, (4,), cfg, use_delta_component=True)
    raw = state.sources_by_module["a"]
    assert raw.min() < 0 and raw.max() > 1  # randn, 51 draws
    assert torch.equal(state.expanded("a")[0], torch.sigmoid(raw)[0])
    g = torch.zeros(4, 50)  # masks are the effective sources themselves
    info = state.mask_infos({"a": g}, {"a": torch.zeros(2, 3)})["a"]
    assert torch.allclose(info.mask, torch.sigmoid(raw[..., :50]).expand(4, 50))
    assert torch.allclose(info.delta_mask, torch.sigmoid(raw[..., 50]).expand(4))
    before = raw.detach().clone()
    state.update([torch.ones_like(raw)], step=0, total_steps=10)  # sign step of lr 0.1, and no clamp
    assert torch.allclose(raw, before + 0.1)
    clamped = PersistentPGDState({"a": 5}, (4,), PersistentPGDConfig(optimizer={"type": "sign"}))
    clamped.update([torch.ones_like(clamped.sources_by_module["a"])], 0, 10)
    assert clamped.sources_by_module["a"].max() <= 1
    loss_cfg = PersistentPGDReconLossConfig(coeff=1.0, use_sigmoid_parameterization=True)
    assert loss_cfg.ppgd().use_sigmoid_parameterization


def _advance(state: PersistentPGDState, n: int) -> None:
    for i in range(n):
        state.update([torch.full_like(s, (-1.0) ** i * (i + 1)) for s in state.sources()], i, 10)


def test_ppgd_state_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = PersistentPGDState({"x": 3, "y": 2}, (4,), PersistentPGDConfig())
    _advance(a, 3)
    save_ppgd_state({"PersistentPGDReconLoss": a}, tmp_path, 3)
    torch.manual_seed(1)
    b = PersistentPGDState({"x": 3, "y": 2}, (4,), PersistentPGDConfig())
    leaf = b.sources_by_module["x"]
    assert load_ppgd_state(tmp_path, {"PersistentPGDReconLoss": b}) == 3
    assert b.sources_by_module["x"] is leaf  # loaded in place: the optimizer's leaves stay the same tensors
    for p in ("x", "y"):
        assert torch.equal(a.sources_by_module[p], b.sources_by_module[p])
    _advance(a, 2)
    _advance(b, 2)  # the Adam moments and step count came along: the next steps agree exactly
    for p in ("x", "y"):
        assert torch.equal(a.sources_by_module[p], b.sources_by_module[p])
    with pytest.raises(ValueError, match="PPGD states"):
        load_ppgd_state(tmp_path / "ppgd_3.pth", {"PersistentPGDReconSubsetLoss": b})
    with pytest.raises(ValueError, match="shape"):
        load_ppgd_state(
            tmp_path, {"PersistentPGDReconLoss": PersistentPGDState({"x": 4, "y": 2}, (4,), PersistentPGDConfig())}
        )
    assert save_ppgd_state({}, tmp_path, 5) is None


def test_training_checkpoints_carry_ppgd_state(tmp_path: Path) -> None:
    tc = TMSTargetConfig()
    cfg = SPDConfig(
        default_C=4, steps=3, batch_size=256, eval_freq=3, n_eval_steps=1, faithfulness_warmup_steps=0,
        losses=[StochasticReconLossConfig(coeff=1.0), PersistentPGDReconLossConfig(coeff=1.0)],
    )  # fmt: skip

    def decomposer(out: Path) -> Decomposer:
        torch.manual_seed(0)
        target = TMSModel(tc)
        with torch.no_grad():
            target.linear2.bias.fill_(0.5)  # outputs above the ReLU's kink: the sources get a gradient
        return Decomposer(target, cfg, out, 0, torch.device("cpu"), tc, log=lambda _: None)

    first = decomposer(tmp_path / "first")
    first.run()
    assert (tmp_path / "first" / "ppgd_3.pth").exists()
    trained = first.ppgd_states["PersistentPGDReconLoss"]
    resumed = decomposer(tmp_path / "second")
    fresh = {p: s.detach().clone() for p, s in resumed.ppgd_states["PersistentPGDReconLoss"].sources_by_module.items()}
    assert resumed.load_ppgd_checkpoint(tmp_path / "first") == 3
    for p, s in resumed.ppgd_states["PersistentPGDReconLoss"].sources_by_module.items():
        assert torch.equal(s, trained.sources_by_module[p]) and not torch.equal(s, fresh[p])
    assert resumed.ppgd_states["PersistentPGDReconLoss"]._t == 3


def test_reference_global_shared_mlp_checkpoint_keys_load() -> None:
    """The reference keeps its GELUs inside one Sequential (`layers.0`, `layers.2`): they map onto our layer list."""
    from spd.interop.state_dict import StateDictMismatch, convert_reference_state_dict

    cfg = GlobalCiFnConfig(fn_type="global_shared_mlp", hidden_dims=[5])
    torch.manual_seed(0)
    model = ComponentModel(TwoLinear(), {"a": 3, "b": 2}, global_ci=cfg)
    ours = model.state_dict()
    reference = {k: v for k, v in ours.items() if not k.startswith("ci_fn.")}
    for i, layer in enumerate(("0", "2")):
        for p in ("W", "b"):
            reference[f"ci_fn._global_ci_fn.layers.{layer}.{p}"] = ours[f"ci_fn._global.layers.{i}.{p}"]
    converted = convert_reference_state_dict(reference, cfg, [])
    assert set(converted) == set(ours)
    model.load_state_dict(converted, strict=True)
    with pytest.raises(StateDictMismatch, match="even index"):
        convert_reference_state_dict({"ci_fn._global_ci_fn.layers.1.W": torch.zeros(1)}, cfg, [])
