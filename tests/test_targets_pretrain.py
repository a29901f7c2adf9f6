"""Reference pretrain architectures (spd/targets/llama_simple_mlp.py ...): the reference's own LM runs reproduce."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from spd.targets import build_target, load_target, parse_target_config, save_target
from spd.targets.llama_simple_mlp import LlamaSimpleMLP, LlamaSimpleMLPConfig
from spd.targets.pretrain_names import UnsupportedReferenceModelError
from spd.targets.pretrain_run import PRETRAIN_MODEL_CLASSES, load_pretrain_run, pretrain_config_from_dict

FIXTURES = Path(__file__).parent / "fixtures" / "reference_runs"
LM_RUNS = {"lm_llama_mlp_layerwise": "model_400.pth", "lm_llama_mlp_global": "model_200.pth"}
CKPT = "target/checkpoints/model_step_299.pt"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _check_probe(model: torch.nn.Module, run: str) -> float:
    probe = np.load(FIXTURES / run / "probe.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(probe["input"]))
    expected = torch.from_numpy(probe["target_out"])
    assert logits.dtype == torch.float32 and logits.shape == expected.shape
    err = (logits - expected).abs().max().item()
    assert err <= 1e-5 * max(1.0, expected.abs().max().item()), err
    return err


@pytest.mark.parametrize("run", sorted(LM_RUNS))
def test_pretrain_run_reproduces_reference_logits(run: str) -> None:
    model, config, tokenizer = load_pretrain_run(FIXTURES / run / CKPT)
    assert isinstance(model, LlamaSimpleMLP) and isinstance(config, LlamaSimpleMLPConfig)
    assert tokenizer == FIXTURES / run / "target" / "tokenizer.json"
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.wte.weight is model.lm_head.weight
    _check_probe(model, run)


@pytest.mark.parametrize("run", sorted(LM_RUNS))
def test_spd_checkpoint_target_weights_reproduce_reference_logits(run: str) -> None:
    sd = torch.load(FIXTURES / run / LM_RUNS[run], map_location="cpu", weights_only=True)
    target = {k[len("target_model.") :]: v for k, v in sd.items() if k.startswith("target_model.")}
    config = LlamaSimpleMLPConfig.model_validate(
        yaml.safe_load((FIXTURES / run / "target/model_config.yaml").read_text())
    )
    model = LlamaSimpleMLP(config)
    assert list(model.state_dict()) == list(target)  # same keys, same order
    model.load_state_dict(target, strict=True)
    _check_probe(model.eval(), run)
    modules = dict(model.named_modules())
    for m in yaml.safe_load((FIXTURES / run / "final_config.yaml").read_text())["module_info"]:
        assert isinstance(modules[m["module_pattern"].replace("*", "0")], torch.nn.Linear)


def test_state_dict_keys_match_reference_checkpoint() -> None:
    pretrain = torch.load(FIXTURES / "lm_llama_mlp_layerwise" / CKPT, map_location="cpu", weights_only=True)
    model = LlamaSimpleMLP(
        LlamaSimpleMLPConfig(n_layer=2, n_head=4, n_embd=64, n_intermediate=256, vocab_size=713, n_key_value_heads=2)
    )
    assert list(model.state_dict()) == list(pretrain)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in pretrain.items()
    }
    names = [n for n, _ in model.named_modules()]
    assert names[:12] == ["", "wte", "h", "h.0", "h.0.rms_1", "h.0.attn", "h.0.attn.q_proj", "h.0.attn.k_proj",
                          "h.0.attn.v_proj", "h.0.attn.o_proj", "h.0.rms_2", "h.0.mlp"]  # fmt: skip
    assert names[12:15] == ["h.0.mlp.c_fc", "h.0.mlp.gelu", "h.0.mlp.down_proj"]
    mha = LlamaSimpleMLP(LlamaSimpleMLPConfig(n_layer=1, n_head=2, n_embd=8, n_intermediate=16, vocab_size=5,
                                              use_grouped_query_attention=False))  # fmt: skip
    assert [k for k in mha.state_dict() if ".attn." in k] == ["h.0.attn.c_attn.weight", "h.0.attn.o_proj.weight"]


def test_checkpoint_unwrapping_and_target_round_trip(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "lm_llama_mlp_layerwise" / "target", run, ignore=shutil.ignore_patterns("*.pt", "*.log"))
    sd = torch.load(FIXTURES / "lm_llama_mlp_layerwise" / CKPT, map_location="cpu", weights_only=True)
    (run / "checkpoints").mkdir(exist_ok=True)
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in sd.items()}}, run / "checkpoints" / "model_step_1.pt")
    cfg = yaml.safe_load((run / "model_config.yaml").read_text())
    del cfg["model_type"]  # old reference runs: the SPD config's class supplies it
    (run / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="model_type"):
        load_pretrain_run(run / "checkpoints" / "model_step_1.pt")
    model, config, tokenizer = load_pretrain_run(
        run / "checkpoints" / "model_step_1.pt", model_class="spd.pretrain.models.llama_simple_mlp.LlamaSimpleMLP"
    )
    assert tokenizer is None
    # the project's own target format round-trips the imported model through the `kind` union
    save_target(model, config, tmp_path / "saved")
    again, again_cfg = load_target(tmp_path / "saved")
    assert again_cfg == config and isinstance(build_target(again_cfg), LlamaSimpleMLP)
    assert parse_target_config(config.model_dump(mode="json")) == config
    _check_probe(again, "lm_llama_mlp_layerwise")


def test_refused_options_and_unknown_classes(tmp_path: Path) -> None:
    base = yaml.safe_load((FIXTURES / "lm_llama_mlp_layerwise" / "target/model_config.yaml").read_text())
    for field, value in (("n_key_value_heads", 3), ("n_head", 5), ("model_type", "LlamaSimpleMLPv2"), ("dropout", 0.1)):
        with pytest.raises(ValueError, match=field):
            LlamaSimpleMLPConfig.model_validate({**base, field: value})
    with pytest.raises(UnsupportedReferenceModelError, match=r"GPT3.*LlamaSimpleMLP"):
        pretrain_config_from_dict({**base, "model_type": "GPT3"})
    with pytest.raises(UnsupportedReferenceModelError, match="not a reference class"):
        pretrain_config_from_dict(base, model_class="my.models.Foo")
    assert (
        PRETRAIN_MODEL_CLASSES["LlamaSimpleMLP"]
        == PRETRAIN_MODEL_CLASSES["spd.pretrain.models.llama_simple_mlp.LlamaSimpleMLP"]
    )
    with pytest.raises(FileNotFoundError, match="model_step_<N>.pt"):
        load_pretrain_run(tmp_path / "checkpoints" / "model_step_9.pt")
    (tmp_path / "checkpoints").mkdir()
    torch.save({}, tmp_path / "checkpoints" / "model_step_9.pt")
    with pytest.raises(FileNotFoundError, match="model_config.yaml"):
        load_pretrain_run(tmp_path / "checkpoints" / "model_step_9.pt")
    model = LlamaSimpleMLP(
        LlamaSimpleMLPConfig(
            n_layer=1, n_head=2, n_embd=8, n_intermediate=16, vocab_size=5, block_size=4, n_key_value_heads=1
        )
    )
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 5, dtype=torch.long))


# State-dict keys of one block (i = 0) plus the globals, as the reference's classes name them (read off the
# reference running on random weights; see the module docstrings for the layouts).
_LLAMA_BLOCK = ["rms_1.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.o_proj.weight", "rms_2.weight"]  # fmt: skip
REFERENCE_KEYS = {
    "LlamaSimpleMLP": ["wte.weight", *(f"h.0.{k}" for k in _LLAMA_BLOCK), "h.0.mlp.c_fc.weight",
                       "h.0.mlp.down_proj.weight", "ln_f.weight", "lm_head.weight"],
    "LlamaSimple": ["wte.weight", *(f"h.0.{k}" for k in _LLAMA_BLOCK), "h.0.mlp.gate_proj.weight",
                    "h.0.mlp.up_proj.weight", "h.0.mlp.down_proj.weight", "ln_f.weight", "lm_head.weight"],
    "Llama": ["transformer.wte.weight", "transformer.h.0.rms_1.weight", "transformer.h.0.attn.q_attn.weight",
              "transformer.h.0.attn.kv_attn.weight", "transformer.h.0.attn.c_proj.weight", "transformer.h.0.rms_2.weight",
              "transformer.h.0.mlp.gate_proj.weight", "transformer.h.0.mlp.up_proj.weight",
              "transformer.h.0.mlp.down_proj.weight", "transformer.rms_f.weight", "lm_head.weight"],
    "GPT2Simple": ["wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.ln_1.bias",
                   *(f"h.0.attn.{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias")),
                   "h.0.ln_2.weight", "h.0.ln_2.bias", "h.0.mlp.c_fc.weight", "h.0.mlp.c_fc.bias",
                   "h.0.mlp.down_proj.weight", "h.0.mlp.down_proj.bias", "ln_f.weight", "ln_f.bias", "lm_head.weight"],
    "GPT2": ["wte.weight", "wpe.weight", "h_torch.0.ln_1.weight", "h_torch.0.ln_1.bias",
             *(f"h_torch.0.{m}.{w}" for m in ("attn.c_attn", "attn.c_proj") for w in ("weight", "bias")),
             "h_torch.0.ln_2.weight", "h_torch.0.ln_2.bias",
             *(f"h_torch.0.{m}.{w}" for m in ("mlp.c_fc", "mlp.c_proj") for w in ("weight", "bias")),
             "ln_f.weight", "ln_f.bias", "lm_head.weight"],
}  # fmt: skip
SMALL = {"n_layer": 1, "n_head": 4, "n_embd": 16, "vocab_size": 23, "block_size": 8}
SMALL_LLAMA = {**SMALL, "n_intermediate": 24, "n_key_value_heads": 2, "n_ctx": 8, "rotary_dim": 4}


@pytest.mark.parametrize("name", sorted(REFERENCE_KEYS))
def test_every_reference_class_has_reference_keys_and_loads_as_a_pretrain_run(name: str, tmp_path: Path) -> None:
    config_cls, model_cls = PRETRAIN_MODEL_CLASSES[name]
    assert PRETRAIN_MODEL_CLASSES[f"spd.pretrain.models.{name}"] == (config_cls, model_cls)
    reference_yaml = {"model_type": name, **(SMALL if name.startswith("GPT2") else SMALL_LLAMA)}
    config = config_cls.model_validate(reference_yaml)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    assert list(model.state_dict()) == REFERENCE_KEYS[name]
    assert model.lm_head.weight is model.state_dict(keep_vars=True)[REFERENCE_KEYS[name][0]]  # tied embedding
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "model_config.yaml").write_text(yaml.safe_dump(reference_yaml))
    state = model.state_dict()
    if name == "Llama":  # old Llama checkpoints saved the rotary tables; they are dropped on load
        state = {**state, "transformer.h.0.attn.rotary_sin": torch.zeros(8, 4)}
    torch.save(state, tmp_path / "checkpoints" / "model_step_3.pt")
    loaded, loaded_cfg, _ = load_pretrain_run(tmp_path / "checkpoints" / "model_step_3.pt", model_class=name)
    assert type(loaded) is model_cls and loaded_cfg == config
    idx = torch.randint(0, 23, (2, 8))
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))
    assert isinstance(build_target(parse_target_config(config.model_dump(mode="json"))), model_cls)
