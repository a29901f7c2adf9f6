"""Configurable eval metrics and the persistent-PGD evals (issue 24, items 2 and 3): exact values on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from spd.losses.hidden_acts_recon import hidden_acts_recon
from spd.losses.persistent_pgd import PersistentPGDConfig, PersistentPGDState, ppgd_eval_sums, ppgd_recon_loss
from spd.models import ComponentModel
from spd.models.masks import MaskInfo
from spd.targets import TMSModel, TMSTargetConfig
from spd.train import Decomposer, SPDConfig
from spd.train import metrics as M
from spd.train.config import (
    PersistentPGDReconLossConfig,
    PersistentPGDReconSubsetLossConfig,
    StochasticReconLossConfig,
)
from tests.test_spd_ppgd_hidden import TwoLinear


@torch.no_grad()
def test_ppgd_eval_sums_exact_value() -> None:
    torch.manual_seed(0)
    model = ComponentModel(TwoLinear(), {"a": 2, "b": 3}, ci_fn_type="shared_mlp", ci_hidden_dims=[])
    state = PersistentPGDState({"a": 2, "b": 3}, (5,), PersistentPGDConfig(), use_delta_component=False)
    with torch.no_grad():
        state.sources_by_module["a"].copy_(torch.tensor([[0.2, 0.6]]))
        state.sources_by_module["b"].copy_(torch.tensor([[1.0, 0.0, 0.5]]))
    x = torch.randn(5, 3)
    target_out, _ = model.forward_with_inputs(x)
    ci = {"a": torch.full((5, 2), 0.5), "b": torch.full((5, 3), 0.25)}
    per, (out_sum, out_n) = ppgd_eval_sums(model, x, target_out, ci, None, state)
    # by hand: masks g + (1 - g) s, every module replaced; b reads relu of a's masked output
    ca, cb = model.components("a"), model.components("b")
    ma, mb = 0.5 + 0.5 * torch.tensor([0.2, 0.6]), 0.25 + 0.75 * torch.tensor([1.0, 0.0, 0.5])
    out_a = (x @ ca.V * ma) @ ca.U
    out_b = (torch.relu(out_a) @ cb.V * mb) @ cb.U
    ta = x @ model.target_weight("a").T
    tb = torch.relu(ta) @ model.target_weight("b").T
    assert per["a"][0] == pytest.approx(float(((out_a - ta) ** 2).sum()), rel=1e-5) and per["a"][1] == 20
    assert per["b"][0] == pytest.approx(float(((out_b - tb) ** 2).sum()), rel=1e-5) and per["b"][1] == 10
    assert out_sum == pytest.approx(float(((out_b - target_out) ** 2).sum()), rel=1e-5) and out_n == 10
    # the same masks through the training loss's and the hidden-acts loss's own code paths
    assert out_sum / out_n == pytest.approx(float(ppgd_recon_loss(model, x, target_out, ci, None, state)), rel=1e-5)
    pooled, by_module = hidden_acts_recon(model, x, state.mask_infos(ci, None))
    assert (per["a"][0] + per["b"][0]) / 30 == pytest.approx(float(pooled.detach()), rel=1e-5)
    assert per["a"][0] / 20 == pytest.approx(by_module["a"], rel=1e-5)


def test_eval_sources_follow_the_eval_batch_size() -> None:
    single = PersistentPGDState({"a": 2}, (8,), PersistentPGDConfig(), use_delta_component=False)
    assert single.expanded("a", (3,)).shape == (3, 2)
    per_token = PersistentPGDState({"a": 2}, (8,), PersistentPGDConfig(scope={"type": "per_batch_per_position"}))
    with pytest.raises(ValueError, match="cannot serve"):
        per_token.expanded("a", (3,))


def test_metric_helpers() -> None:
    ci = {"l.0.in": torch.tensor([[0.0, 0.5], [1.0, 0.05]]), "l.0.out": torch.tensor([[0.2, 0.2], [0.2, 0.0]])}
    assert torch.allclose(M.ci_mean_per_component(ci)["l.0.in"], torch.tensor([0.5, 0.275]))
    assert torch.equal(M.activation_density(ci, 0.1)["l.0.out"], torch.tensor([1.0, 0.5]))
    l0 = M.ci_l0(ci, 0.1)
    assert l0 == {"l.0.in": 1.0, "l.0.out": 1.5}
    assert M.group_sums(l0, {"all": ["l.*"], "ins": ["l.*.in"], "none": ["x"]}) == {"all": 2.5, "ins": 1.0, "none": 0}


def _tms_decomposer(tmp_path: Path, cfg: SPDConfig) -> Decomposer:
    tc = TMSTargetConfig(n_hidden_layers=1)
    torch.manual_seed(0)
    target = TMSModel(tc)
    with torch.no_grad():
        target.linear2.bias.fill_(0.5)  # keep outputs above the ReLU's kink
    return Decomposer(target, cfg, tmp_path, 0, torch.device("cpu"), tc, log=lambda _: None)


_BASE = dict(default_C=4, steps=2, batch_size=64, n_eval_steps=1, faithfulness_warmup_steps=0)


def test_default_eval_metrics_are_todays_plus_ppgd(tmp_path: Path) -> None:
    cfg = SPDConfig(**_BASE, losses=[StochasticReconLossConfig(coeff=1.0), PersistentPGDReconLossConfig(coeff=1.0)])
    assert [m.classname for m in cfg.resolved_eval_metrics(False)] == [
        "CI_L0", "IdentityCIError", "PersistentPGDReconEval",
    ]  # fmt: skip
    out = _tms_decomposer(tmp_path, cfg).evaluate(0, slow=True)
    assert "eval/l0/0.1_mean" in out and "eval/identity_ci_error/total" in out
    assert {"eval/loss/PersistentPGDReconEval/output_recon", "eval/loss/PersistentPGDReconEval/hidden_acts"} <= set(out)
    fast = _tms_decomposer(tmp_path / "fast", cfg).evaluate(0, slow=False)
    assert not any("PersistentPGDReconEval" in k or "identity_ci_error" in k for k in fast)  # slow metrics
    assert [m.classname for m in SPDConfig().resolved_eval_metrics(True)] == [
        "CI_L0",
        "IdentityCIError",
        "CEandKLLosses",
    ]


def test_configured_eval_metrics_exact_values(tmp_path: Path) -> None:
    losses = [
        StochasticReconLossConfig(coeff=1.0),
        PersistentPGDReconLossConfig(coeff=1.0),
        PersistentPGDReconSubsetLossConfig(coeff=1.0),
    ]
    evals = [
        {"classname": "CI_L0", "groups": {"outer": ["linear"]}},
        {"classname": "CIMeanPerComponent"},
        {"classname": "ComponentActivationDensity"},
        {"classname": "IdentityCIError", "identity_ci": [{"layer_pattern": "linear1", "n_features": 5}],
         "dense_ci": [{"layer_pattern": "hidden_layers.*", "k": 2}]},
        {"classname": "CIHiddenActsReconLoss"},
        {"classname": "StochasticHiddenActsReconLoss"},
        {"classname": "PersistentPGDReconEval"},
        {"classname": "PersistentPGDReconSubsetEval"},
    ]  # fmt: skip
    dec = _tms_decomposer(tmp_path, SPDConfig(**_BASE, losses=losses, eval_metrics=evals))
    dec.run()  # the sources move away from their initial values for two steps
    torch.manual_seed(5)
    batch = dec.data.eval_batch(64)
    dec.data.eval_batch = lambda bs: batch  # one known eval batch
    out = dec.evaluate(2, slow=True)
    model = dec.model
    target_out, acts = model.forward_with_inputs(batch)
    ci = model.causal_importances(acts, "continuous").lower_leaky
    deltas = model.deltas()
    l0 = M.ci_l0(ci, 0.1)
    assert out["eval/l0/0.1_outer"] == pytest.approx(l0["linear1"] + l0["linear2"])
    assert out["eval/ci_mean/linear1"] == pytest.approx(ci["linear1"].mean(0).tolist())
    assert out["eval/activation_density/hidden_layers.0"] == pytest.approx(
        (ci["hidden_layers.0"] > 0.1).float().mean(0).tolist()
    )
    assert set(k for k in out if k.startswith("eval/identity_ci_error/") and not k.endswith("_0p2")) == {
        "eval/identity_ci_error/linear1",
        "eval/identity_ci_error/hidden_layers.0",
        "eval/identity_ci_error/total",
    }  # fmt: skip  (linear2 is in neither list)
    probe_ci = model.lower_leaky_ci(model.forward_with_inputs(dec.target.probe_batch(torch.device("cpu")))[1])
    assert out["eval/identity_ci_error/hidden_layers.0"] == M.dense_ci_error(probe_ci["hidden_layers.0"], 2, 0.1)
    ci_pooled, ci_per = hidden_acts_recon(model, batch, {p: MaskInfo(mask=g) for p, g in ci.items()})
    assert out["eval/loss/CIHiddenActsReconLoss"] == pytest.approx(float(ci_pooled.detach()), rel=1e-5)
    assert out["eval/loss/CIHiddenActsReconLoss/linear1"] == pytest.approx(ci_per["linear1"], rel=1e-5)
    assert "eval/loss/StochasticHiddenActsReconLoss/hidden_layers.0" in out
    for name, loss in (("PersistentPGDReconEval", "PersistentPGDReconLoss"),
                       ("PersistentPGDReconSubsetEval", "PersistentPGDReconSubsetLoss")):  # fmt: skip
        state = dec.ppgd_states[loss]
        expected = ppgd_recon_loss(model, batch, target_out, ci, deltas, state, "all")
        assert out[f"eval/loss/{name}/output_recon"] == pytest.approx(float(expected.detach()), rel=1e-5)
        pooled, per = hidden_acts_recon(model, batch, state.mask_infos(ci, deltas))
        assert out[f"eval/loss/{name}/hidden_acts"] == pytest.approx(float(pooled.detach()), rel=1e-5)
        for p in model.target_module_paths:
            assert out[f"eval/loss/{name}/hidden_acts/{p}"] == pytest.approx(per[p], rel=1e-5)
    sub, full = (
        dec.ppgd_states[n].sources_by_module["linear1"]
        for n in ("PersistentPGDReconSubsetLoss", "PersistentPGDReconLoss")
    )
    assert not torch.equal(sub, full)  # two states, two different evals


def test_eval_metric_config_validation() -> None:
    with pytest.raises(ValidationError, match="not a training loss"):
        SPDConfig(eval_metrics=[{"classname": "PersistentPGDReconEval"}])
    with pytest.raises(ValidationError, match="once"):
        SPDConfig(eval_metrics=[{"classname": "CI_L0"}, {"classname": "CI_L0"}])
    with pytest.raises(ValidationError):
        SPDConfig(eval_metrics=[{"classname": "UVPlots"}])
    assert SPDConfig(eval_metrics=[]).resolved_eval_metrics(True) == []
    per_token = PersistentPGDReconLossConfig(coeff=1.0, scope={"type": "per_batch_per_position"})
    cfg = SPDConfig(batch_size=8, eval_batch_size=4, losses=[per_token])
    assert cfg.resolved_eval_metrics(True) == [m for m in cfg.resolved_eval_metrics(True) if "PGD" not in m.classname]
    assert "PersistentPGDReconEval" in [
        m.classname for m in SPDConfig(batch_size=8, losses=[per_token]).resolved_eval_metrics(True)
    ]
    with pytest.raises(ValidationError, match="cannot serve"):
        SPDConfig(
            batch_size=8, eval_batch_size=4, losses=[per_token], eval_metrics=[{"classname": "PersistentPGDReconEval"}]
        )
