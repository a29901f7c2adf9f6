"""Residual-MLP toy targets: shapes, training with the feature check, rejection of degenerate targets, SPD smoke."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spd.models import load_decomposition
from spd.targets import DegenerateTargetError, ResidMLPModel, ResidMLPTargetConfig, build_target, train_target
from spd.targets.resid_mlp import RESID_MLP_PRESETS, resid_mlp_feature_check
from spd.train import SPDConfig, decompose

SMALL = ResidMLPTargetConfig(
    n_features=8, d_embed=48, d_mlp=6, feature_probability=0.1, train_steps=400, train_batch_size=256, lr=1e-2
)


def test_architecture_fixed_embedding_and_module_names() -> None:
    model = ResidMLPModel(ResidMLPTargetConfig(**RESID_MLP_PRESETS["resid_mlp3"]))
    assert model.W_E.shape == (102, 1000) and not model.W_E.requires_grad
    assert torch.allclose(model.W_E.norm(dim=1), torch.ones(102))
    names = [n for n, _ in model.default_module_info(7)]
    assert names == [f"layers.{i}.{m}" for i in range(3) for m in ("mlp_in", "mlp_out")]
    assert model.expected_ci_patterns() == {}  # no per-module pattern across layers
    x = model.sample_batch(4096, "cpu")
    active = x != 0
    assert 0.005 < float(active.float().mean()) < 0.015 and float(x.min()) < -0.5 and float(x.max()) > 0.5
    assert torch.equal(model.labels(x), x + torch.relu(x))  # trivial label coefficients


def test_trained_target_computes_every_feature_and_untrained_is_rejected() -> None:
    torch.manual_seed(0)
    model, info = train_target(SMALL, "cpu", log=lambda m: None)
    assert info["attempts"][-1]["missing_features"] == []
    assert resid_mlp_feature_check(model, 0.25) == []
    with torch.no_grad():  # the MLP adds a positive share of ReLU(0.75) on every one-hot probe
        assert float(model.mlp_contribution(model.probe_batch("cpu")).diagonal().min()) > 0.75 * 0.25
    with pytest.raises(DegenerateTargetError, match="represents every feature"):
        train_target(SMALL.model_copy(update={"train_steps": 0}), "cpu", log=lambda m: None)


def test_spd_on_resid_mlp_runs_reports_patterns_and_reloads(tmp_path: Path) -> None:
    target = build_target(SMALL.model_copy(update={"train_steps": 0}))
    cfg = SPDConfig(
        default_C=10,
        steps=40,
        batch_size=64,
        eval_freq=40,
        n_eval_steps=1,
        faithfulness_warmup_steps=10,
        losses=[
            {"classname": "ImportanceMinimalityLoss", "coeff": 1e-5, "pnorm": 2.0},
            {"classname": "StochasticReconLoss", "coeff": 1.0},
            {"classname": "StochasticReconLayerwiseLoss", "coeff": 1.0},
        ],
    )
    summary = decompose(target, SMALL, cfg, tmp_path, seed=0, log=lambda m: None)
    m = summary["metrics"]
    assert "eval/identity_ci_error/layers.0.mlp_in" in m and "eval/identity_ci_error/layers.0.mlp_out" in m
    model = load_decomposition(tmp_path)
    assert set(model.module_to_c) == {"layers.0.mlp_in", "layers.0.mlp_out"}
    assert torch.equal(model.target_model.W_E, target.W_E)
