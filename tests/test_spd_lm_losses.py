"""The LM-side losses wired into the training loop: persistent PGD (all scopes, subset + routing) and
hidden-activation reconstruction (stochastic, CI, PGD), plus the global CI function, on a short LM run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spd.data import CorpusConfig, build_corpus
from spd.lm import TinyLMConfig
from spd.losses.persistent_pgd import ppgd_recon_loss
from spd.models import load_decomposition
from spd.models.masks import MaskInfo
from spd.targets import TinyLM
from spd.targets.lm import LMData, LMDataConfig
from spd.train import Decomposer, SPDConfig, decompose

LM_CFG = TinyLMConfig(vocab_size=300, d_model=16, n_layers=2, n_heads=2, d_mlp=32, n_ctx=8)
ADAM = {"type": "adam", "lr_schedule": {"start_val": 0.05, "fn_type": "constant", "final_val_frac": 1.0}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return build_corpus(CorpusConfig(n_docs=60, vocab_size=300), tmp_path_factory.mktemp("c") / "corpus")


def _lm() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(LM_CFG)


def _spd(extra: list[dict], steps: int = 4, **kw) -> SPDConfig:
    return SPDConfig(
        **{
            "default_C": 6,
            "ci_fn": {"fn_type": "shared_mlp", "hidden_dims": [8]},
            "output_loss_type": "kl",
            "losses": [
                {"classname": "ImportanceMinimalityLoss", "coeff": 1e-3, "pnorm": 2.0},
                {"classname": "StochasticReconLoss", "coeff": 1.0},
                *extra,
            ],
            "lr_schedule": {"start_val": 3e-3, "fn_type": "constant", "final_val_frac": 1.0},
            "steps": steps,
            "batch_size": 4,
            "faithfulness_warmup_steps": 2,
            "eval_freq": steps,
            "n_eval_steps": 1,
            "train_log_freq": 1,
            **kw,
        }
    )


NEW_LOSSES = {
    "ppgd_single": {"classname": "PersistentPGDReconLoss", "coeff": 0.5, "scope": {"type": "single_mask"}},
    "ppgd_broadcast": {
        "classname": "PersistentPGDReconLoss",
        "coeff": 0.5,
        "scope": {"type": "broadcast_across_batch"},
        "optimizer": {"type": "sign", "lr_schedule": {"start_val": 0.1, "fn_type": "linear", "final_val_frac": 0.0}},
    },
    "ppgd_repeat": {
        "classname": "PersistentPGDReconLoss",
        "coeff": 0.5,
        "scope": {"type": "repeat_across_batch", "n_sources": 2},
        "n_warmup_steps": 2,
    },
    "ppgd_per_token": {
        "classname": "PersistentPGDReconLoss",
        "coeff": 0.5,
        "scope": {"type": "per_batch_per_position"},
    },
    "ppgd_subset": {
        "classname": "PersistentPGDReconSubsetLoss",
        "coeff": 0.5,
        "scope": {"type": "repeat_across_batch", "n_sources": 2},
        "routing": {"type": "uniform_k_subset"},
    },
    "ppgd_subset_static": {
        "classname": "PersistentPGDReconSubsetLoss",
        "coeff": 0.5,
        "routing": {"type": "static_probability", "p": 0.5},
    },
    "hidden_stochastic": {"classname": "StochasticHiddenActsReconLoss", "coeff": 1.0},
    "hidden_ci": {"classname": "CIHiddenActsReconLoss", "coeff": 1.0},
    "hidden_pgd": {"classname": "PGDHiddenActsReconLoss", "coeff": 1.0, "n_steps": 2, "step_size": 0.5},
}


@pytest.mark.parametrize("name", list(NEW_LOSSES))
def test_short_lm_decomposition_with_each_new_loss(name: str, corpus, tmp_path: Path) -> None:
    loss = NEW_LOSSES[name]
    data = LMData(corpus, 8, LMDataConfig(dataset_seed=1))
    summary = decompose(_lm(), LM_CFG, _spd([loss]), tmp_path / "spd", seed=0, data=data)
    rows = [json.loads(line) for line in (tmp_path / "spd" / "metrics.jsonl").read_text().splitlines()]
    values = [r[f"train/loss/{loss['classname']}"] for r in rows if f"train/loss/{loss['classname']}" in r]
    assert len(values) == 4 and all(v >= 0 and v == v for v in values)
    is_ppgd = loss["classname"].startswith("PersistentPGD")
    # PPGD sources are tied to the training batch shape: not part of eval; the others are evaluated
    assert (f"eval/loss/{loss['classname']}" in summary["metrics"]) != is_ppgd
    if is_ppgd:
        assert all(f"train/ppgd_lr/{loss['classname']}" in r for r in rows if "train/loss/total" in r)


def test_ppgd_sources_persist_update_after_backward_and_ascend(corpus, tmp_path: Path) -> None:
    losses = [NEW_LOSSES["ppgd_repeat"] | {"n_warmup_steps": 0, "optimizer": ADAM}, NEW_LOSSES["ppgd_subset"]]
    data = LMData(corpus, 8, LMDataConfig(dataset_seed=1))
    dec = Decomposer(_lm(), _spd(losses, steps=5), tmp_path / "spd", 0, torch.device("cpu"), LM_CFG, data=data)
    assert set(dec.ppgd_states) == {"PersistentPGDReconLoss", "PersistentPGDReconSubsetLoss"}
    state = dec.ppgd_states["PersistentPGDReconLoss"]
    objects = state.sources()
    before = [s.detach().clone() for s in objects]
    assert tuple(objects[0].shape) == (2, 8, 7)  # (n_sources, T, C + δ)
    dec.run()
    after = dec.ppgd_states["PersistentPGDReconLoss"].sources()
    assert all(a is b for a, b in zip(objects, after, strict=True))  # the same tensors persisted across steps
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # ... with new values
    assert all(float(s.detach().min()) >= 0 and float(s.detach().max()) <= 1 and s.grad is None for s in after)
    assert state._t == 5  # one ascent step per training step (the final logging step does not train)

    # for fixed model parameters, ascent on the sources increases the PPGD reconstruction loss
    model = dec.model
    batch = data.train_batch(4)
    with torch.no_grad():
        target_out, acts = model.forward_with_inputs(batch)
        ci = model.causal_importances(acts).lower_leaky
        deltas = model.deltas()
    params = [p.detach().clone() for p in model.parameters()]
    recon = []
    for step in range(6):
        loss = ppgd_recon_loss(model, batch, target_out, ci, deltas, state, "all", "kl")
        recon.append(float(loss.detach()))
        state.update(torch.autograd.grad(loss, state.sources()), step, 6)
    assert recon[-1] > recon[0]
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))


def test_ppgd_update_comes_after_the_total_backward(corpus, tmp_path: Path) -> None:
    """The model gradient of the step is computed with the sources as they were when the loss was computed."""
    loss = {"classname": "PersistentPGDReconLoss", "coeff": 1.0, "optimizer": ADAM}
    data = LMData(corpus, 8, LMDataConfig(dataset_seed=1))
    cfg = _spd([loss], steps=1)
    dec = Decomposer(_lm(), cfg, tmp_path / "spd", 0, torch.device("cpu"), LM_CFG, data=data)
    state = dec.ppgd_states["PersistentPGDReconLoss"]
    seen: list[torch.Tensor] = []
    original = state.update

    def spy(grads, step, total):
        comp = dec.model.components("layers.0.mlp.up_proj").V
        seen.append(comp.grad is not None)  # backward already ran when the sources move
        original(grads, step, total)

    state.update = spy
    dec.run()
    assert seen == [True]


def test_global_ci_lm_decomposition_reloads(corpus, tmp_path: Path) -> None:
    ci = {
        "mode": "global",
        "fn_type": "global_reverse_residual",
        "d_resid_ci_fn": 16,
        "reader_hidden_dims": [16],
        "transition_hidden_dim": 24,
        "block_groups": [
            {"name": "layer_1_mlp", "patterns": ["layers.1.mlp.*"]},
            {"name": "layer_0_mlp", "patterns": ["layers.0.mlp.*"]},
        ],
    }
    data = LMData(corpus, 8, LMDataConfig(dataset_seed=1))
    out = tmp_path / "spd"
    decompose(_lm(), LM_CFG, _spd([NEW_LOSSES["ppgd_single"]], ci_fn=ci), out, seed=0, data=data)
    model = load_decomposition(out)
    assert model.global_ci_config.transition_hidden_dim == 24
    state = torch.load(out / "model_4.pth", weights_only=True)
    assert any(k.startswith("ci_fn._global.transitions.0.1") for k in state)
    tokens = data.eval_batch(2)
    _, acts = model.forward_with_inputs(tokens)
    ci_out = model.causal_importances(acts).lower_leaky
    assert {tuple(v.shape) for v in ci_out.values()} == {(2, 8, 6)}
    ones = {p: MaskInfo(mask=torch.ones(2, 8, c)) for p, c in model.module_to_c.items()}
    assert model(tokens, ones).shape == (2, 8, 300)
