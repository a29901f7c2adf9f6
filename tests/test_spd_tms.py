"""TMS target + SPD training loop: degenerate-target rejection, a 300-step smoke run, checkpoint reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spd.models import load_decomposition
from spd.targets import DegenerateTargetError, TMSModel, TMSTargetConfig, feature_check, train_target
from spd.train import SPDConfig, decompose


def test_untrained_target_is_rejected_with_clear_message() -> None:
    with pytest.raises(DegenerateTargetError, match="represents every feature"):
        train_target(TMSTargetConfig(train_steps=0, seed_search=2), log=lambda _: None)


def _tms_with_columns(w: torch.Tensor) -> TMSModel:
    """A TMS target whose linear1 columns (feature directions) are `w`'s columns, zero bias."""
    n_hidden, n_features = w.shape
    model = TMSModel(TMSTargetConfig(n_features=n_features, n_hidden=n_hidden, bias_init="zero"))
    with torch.no_grad():
        model.linear1.weight.copy_(w)
    return model


def test_feature_check_is_one_sided_and_needs_the_other_outputs_near_zero() -> None:
    # Orthogonal directions of squared norm 0.8: output_i = 0.6 on 0.75·e_i, like a trained 40-10 in
    # superposition (0.58-0.63), 0 elsewhere. The reference's |v - 0.75| <= 0.1 would reject it; it is represented.
    assert feature_check(_tms_with_columns(0.8**0.5 * torch.eye(3)), 0.5) == []
    assert feature_check(_tms_with_columns(0.8**0.5 * torch.eye(3)), 0.9) == [0, 1, 2]  # 0.6 < 0.9·0.75
    dropped = torch.eye(3)
    dropped[:, 1] = 0.0  # a feature the target dropped: output_1 = 0
    assert feature_check(_tms_with_columns(dropped), 0.5) == [1]
    shared = torch.eye(3)
    shared[:, 2] = shared[:, 0]  # features 0 and 2 share a direction: each probe lights the other up fully
    assert feature_check(_tms_with_columns(shared), 0.5) == [0, 2]
    leaky = torch.eye(3)
    leaky[1, 0] = 0.6  # 0.75·e_0 also gives output_1 = 0.45 > 0.375, and (Wᵀ W is symmetric) 0.75·e_1 output_0
    assert feature_check(_tms_with_columns(leaky), 0.5) == [0, 1]


def test_tms_id_variant_has_fixed_identity_and_tied_linear2() -> None:
    torch.manual_seed(0)
    model = TMSModel(TMSTargetConfig(n_hidden_layers=1))
    assert torch.equal(model.hidden_layers[0].weight, torch.eye(2))
    assert not model.hidden_layers[0].weight.requires_grad
    assert torch.equal(model.linear2.weight, model.linear1.weight.T)
    assert set(model.state_dict()) == {"linear1.weight", "hidden_layers.0.weight", "linear2.bias"}


def test_smoke_300_steps_lowers_loss_and_reloads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tc = TMSTargetConfig(n_hidden_layers=1)
    target = TMSModel(tc).eval().requires_grad_(False)
    cfg = SPDConfig(
        default_C=10,
        steps=300,
        batch_size=256,
        eval_freq=150,
        n_eval_steps=1,
        train_log_freq=20,
        faithfulness_warmup_steps=50,
        lr_schedule={"start_val": 1e-3, "fn_type": "cosine", "final_val_frac": 0.0},
    )
    summary = decompose(target, tc, cfg, tmp_path / "run", seed=3, log=lambda _: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/loss/total" in r]
    first, last = train[0], train[-1]
    assert last["train/loss/total"] < first["train/loss/total"]
    imp = "train/loss/ImportanceMinimalityLoss"
    assert train[-1][imp] < train[0][imp]  # CIs got sparser
    assert "eval/identity_ci_error/total" in summary["metrics"] and "eval/mmcs/linear1" in summary["metrics"]
    assert (tmp_path / "run" / "model_300.pth").is_file() and (tmp_path / "run" / "summary.json").is_file()
    assert not list((tmp_path / "run").glob("*.tmp"))

    loaded = load_decomposition(tmp_path / "run")
    assert loaded.module_to_c == {"linear1": 10, "linear2": 10, "hidden_layers.0": 10}
    saved = torch.load(tmp_path / "run" / "model_300.pth", weights_only=True)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # tied components share storage after reload too
    assert loaded.components("linear2").U.data_ptr() == loaded.components("linear1").V.data_ptr()
    x = target.sample_batch(64, "cpu")
    _, acts = loaded.forward_with_inputs(x)
    ci = loaded.causal_importances(acts).lower_leaky
    assert set(ci) == set(loaded.module_to_c) and all(float(g.min()) >= 0 and float(g.max()) <= 1 for g in ci.values())


def test_training_is_seeded(tmp_path: Path) -> None:
    def run(name: str) -> dict:
        torch.manual_seed(0)
        tc = TMSTargetConfig()
        target = TMSModel(tc).eval().requires_grad_(False)
        cfg = SPDConfig(default_C=5, steps=20, batch_size=64, eval_freq=20, n_eval_steps=1, faithfulness_warmup_steps=5)
        return decompose(target, tc, cfg, tmp_path / name, seed=1, log=lambda _: None)["metrics"]

    assert run("a") == run("b")
