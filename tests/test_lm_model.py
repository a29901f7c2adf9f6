"""The tiny LM target (spd/lm): architecture contract, training smoke, determinism, checkpoint round trip."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from spd.data import Corpus, CorpusConfig, build_corpus
from spd.lm import TinyLM, TinyLMConfig, TinyLMTrainConfig, load_lm, load_lm_checkpoint, save_lm, train_tiny_lm
from spd.lm.model import output_logits
from spd.lm.train import feature_losses, token_losses

SMALL_MODEL = TinyLMConfig(d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls run fastest on one thread (and are not slowed by other jobs on a shared 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return build_corpus(CorpusConfig(seed=1, n_docs=200, val_fraction=0.1), tmp_path_factory.mktemp("lmc") / "c")


@pytest.fixture(scope="module")
def trained(corpus: Corpus):
    cfg = TinyLMTrainConfig(model=SMALL_MODEL, steps=40, batch_size=8, lr=1e-2, warmup_steps=5, eval_batches=4)
    t0 = time.perf_counter()
    model, info = train_tiny_lm(corpus, cfg, log=lambda _: None)
    return model, info, time.perf_counter() - t0


def test_forward_shapes_and_module_names() -> None:
    cfg = TinyLMConfig(vocab_size=50, d_model=32, n_layers=3, n_heads=4, d_mlp=48, n_ctx=16)
    model = TinyLM(cfg)
    logits = model(torch.randint(0, 50, (2, 16)))
    assert logits.shape == (2, 16, 50)
    modules = dict(model.named_modules())
    for i in range(3):
        up, down = modules[f"layers.{i}.mlp.up_proj"], modules[f"layers.{i}.mlp.down_proj"]
        assert isinstance(up, nn.Linear) and up.weight.shape == (48, 32) and up.bias is None
        assert isinstance(down, nn.Linear) and down.weight.shape == (32, 48) and down.bias is None
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert isinstance(modules[f"layers.{i}.attn.{p}"], nn.Linear)
    assert TinyLM.mlp_module_paths(3)[:2] == ["layers.0.mlp.up_proj", "layers.0.mlp.down_proj"]
    assert model.lm_head.weight is model.embed.weight  # tied by default
    untied = TinyLM(cfg.model_copy(update={"tie_embeddings": False}))
    assert untied.lm_head.weight is not untied.embed.weight
    assert untied.n_params() == model.n_params() + 50 * 32
    with pytest.raises(ValueError):
        model(torch.randint(0, 50, (1, 17)))  # longer than n_ctx
    with pytest.raises(ValueError):
        TinyLMConfig(vocab_size=10, d_model=30, n_heads=4)
    with pytest.raises(ValueError):
        TinyLMConfig(vocab_size=10, d_model=256)  # d_model <= 128


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = TinyLM(TinyLMConfig(vocab_size=50, d_model=32, n_heads=2, n_ctx=16)).eval()
    x = torch.randint(0, 50, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 50
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:])
    assert output_logits(a) is a


def test_training_smoke_loss_decreases_quickly(trained) -> None:
    model, info, seconds = trained
    assert seconds < 15
    assert info["first_step_loss"] > info["uniform_loss"] - 0.5  # starts near chance
    assert info["final_train_loss"] < info["first_step_loss"] - 1.5
    assert info["final_val_loss"] < info["first_step_loss"] - 1.5
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_training_is_deterministic_and_seeds_are_separate(corpus: Corpus) -> None:
    cfg = TinyLMTrainConfig(model=SMALL_MODEL, steps=3, batch_size=4, eval_batches=1)
    state = torch.get_rng_state()

    def weights(c: TinyLMTrainConfig) -> dict[str, torch.Tensor]:
        return train_tiny_lm(corpus, c, log=lambda _: None)[0].state_dict()

    a, b = weights(cfg), weights(cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(torch.get_rng_state(), state)  # training does not disturb the caller's RNG
    other_data = weights(cfg.model_copy(update={"dataset_seed": 1}))
    other_init = weights(cfg.model_copy(update={"seed": 1}))
    assert not torch.equal(a["layers.0.mlp.up_proj.weight"], other_data["layers.0.mlp.up_proj.weight"])
    assert not torch.equal(a["layers.0.mlp.up_proj.weight"], other_init["layers.0.mlp.up_proj.weight"])


def test_checkpoint_round_trip_gives_identical_logits(corpus: Corpus, trained, tmp_path: Path) -> None:
    model, info, _ = trained
    out = save_lm(model, info, corpus.tokenizer_path, tmp_path / "lm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"]
    ckpt = load_lm_checkpoint(out)
    loaded = load_lm(out)
    x = corpus.tokens("val")[:32][None]
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.lm_head.weight is loaded.embed.weight
    assert ckpt.tokenizer_path.read_bytes() == corpus.tokenizer_path.read_bytes()
    record = json.loads((out / "target_config.json").read_text())
    assert record["config"]["kind"] == "tiny_lm" and record["config"]["vocab_size"] == corpus.vocab_size
    assert record["info"]["final_val_loss"] == info["final_val_loss"]
    assert record["info"]["train_config"]["dataset_seed"] == 0
    with pytest.raises(FileExistsError):
        save_lm(model, info, corpus.tokenizer_path, out)
    with pytest.raises(FileNotFoundError, match="not a tiny-LM checkpoint"):
        load_lm(tmp_path)


def test_feature_losses_cover_every_feature(corpus: Corpus, trained) -> None:
    model, _, _ = trained
    losses = token_losses(model, corpus.tokens("val"), SMALL_MODEL.n_ctx)
    assert losses.isnan().sum() >= len(corpus.tokens("val")) // (SMALL_MODEL.n_ctx + 1)
    fl = feature_losses(model, corpus, SMALL_MODEL.n_ctx)
    assert set(fl) == {"all", *corpus.manifest["features"]}
    assert all(v == v for v in fl.values())  # every feature occurs in val, so no NaN
