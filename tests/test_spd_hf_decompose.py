"""The decompose code path on a Hugging Face causal LM: a tiny random GPT-2 (Conv1D MLP) written by the test,
fully offline; and the clear error for a model or dataset that is not there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spd.data import CorpusConfig, build_corpus
from spd.harvest.store import HarvestStore
from spd.lm.hf import HFDatasetMissingError, HFModelMissingError
from spd.models import ComponentModel, load_decomposition
from spd.models.masks import MaskInfo
from stages.base import StageContext
from stages.decompose import DecomposeConfig, run_task

transformers = pytest.importorskip("transformers", reason="needs the `hf` extra")
datasets = pytest.importorskip("datasets", reason="needs the `hf` extra")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory) -> None:
    home = tmp_path_factory.getbasetemp() / "hf_home"
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hfspd")
    corpus = build_corpus(CorpusConfig(seed=1, n_docs=80, vocab_size=300), root / "corpus")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=corpus.tokenizer, eos_token="<|endoftext|>")
    cfg = transformers.GPT2Config(
        vocab_size=corpus.vocab_size, n_positions=32, n_embd=16, n_layer=2, n_head=2,
        bos_token_id=corpus.eos_id, eos_token_id=corpus.eos_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model_dir = root / "tiny-gpt2"
    transformers.GPT2LMHeadModel(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data_dir = root / "stories"
    datasets.Dataset.from_dict({"text": [d["text"] for d in corpus.documents("train")]}).save_to_disk(str(data_dir))
    return {"model_dir": model_dir, "data_dir": data_dir}


def _config(model: str, dataset: str, steps: int = 3) -> DecomposeConfig:
    return DecomposeConfig(
        target={
            "kind": "hf_causal_lm",
            "model": {"model": model},
            "dataset": {"dataset": dataset},
            "seq_len": 16,
        },
        spd={
            "module_info": [
                {"module_pattern": "transformer.h.*.mlp.c_fc", "C": 8},
                {"module_pattern": "transformer.h.*.mlp.c_proj", "C": 8},
            ],
            "ci_fn": {"fn_type": "shared_mlp", "hidden_dims": [8]},
            "output_loss_type": "kl",
            "losses": [
                {"classname": "ImportanceMinimalityLoss", "coeff": 1e-3, "pnorm": 2.0},
                {"classname": "StochasticReconLoss", "coeff": 1.0},
                {"classname": "PersistentPGDReconSubsetLoss", "coeff": 0.5},
                {"classname": "FaithfulnessLoss", "coeff": 1e3},
            ],
            "steps": steps,
            "batch_size": 2,
            "faithfulness_warmup_steps": 5,
            "eval_freq": steps,
            "n_eval_steps": 1,
        },
    )


def _ctx(out: Path) -> StageContext:
    return StageContext(stage="decompose", out_dir=out, upstream_dirs={}, num_tasks=1, seed=0)


def test_conv1d_components_match_the_transposed_weight(world) -> None:
    gpt2 = transformers.GPT2LMHeadModel.from_pretrained(world["model_dir"]).eval()
    path = "transformer.h.0.mlp.c_fc"
    conv = gpt2.get_submodule(path)
    assert tuple(conv.weight.shape) == (16, 64)  # Conv1D stores (in, out)
    model = ComponentModel(gpt2, {path: 16}, ci_fn_type="shared_mlp", ci_hidden_dims=[])
    comp = model.components(path)
    assert (comp.d_in, comp.d_out) == (16, 64)
    assert torch.equal(model.target_weight(path), conv.weight.T)
    with torch.no_grad():  # V U = W_stored, i.e. W' = (V U)ᵀ = the (out, in) target weight: Δ = 0
        comp.V.copy_(torch.eye(16))
        comp.U.copy_(conv.weight)
    assert float(model.deltas()[path].detach().abs().max()) == 0.0
    tokens = torch.randint(0, gpt2.config.vocab_size, (2, 6))
    out = model(tokens, {path: MaskInfo(mask=torch.ones(2, 6, 16))})
    assert torch.allclose(out, gpt2(tokens).logits, atol=1e-5)


def test_decompose_stage_on_tiny_gpt2_and_reload(world, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_task(_config(str(world["model_dir"]), str(world["data_dir"])), _ctx(out), 0)
    model = load_decomposition(out)
    assert set(model.module_to_c) == {f"transformer.h.{i}.mlp.{m}" for i in (0, 1) for m in ("c_fc", "c_proj")}
    assert model.run_config["target"]["kind"] == "hf_causal_lm" and (out / "target" / "tokenizer.json").is_file()
    state = torch.load(out / "model_3.pth", weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    reference = transformers.GPT2LMHeadModel.from_pretrained(world["model_dir"]).eval()
    tokens = torch.randint(0, reference.config.vocab_size, (2, 16))
    assert torch.allclose(model(tokens), reference(tokens).logits, atol=1e-5)  # the target reloads unchanged
    masks = {p: MaskInfo(mask=torch.ones(2, 16, c)) for p, c in model.module_to_c.items()}
    assert model(tokens, masks).shape == (2, 16, reference.config.vocab_size)


def test_harvest_reads_the_hf_decompositions_own_dataset(world, tmp_path: Path, monkeypatch, capsys) -> None:
    """A decomposition trained here on a Hugging Face dataset (written by this test, with a tokenizer it trained)
    records it (data.source); harvest tokenizes it once into a token cache, every later task and run reuses it,
    and the store is the same for 1 and 4 tasks."""
    import duckdb

    from stages.harvest import STAGE as HARVEST

    monkeypatch.setenv("SPD_PIPELINE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    run_task(_config(str(world["model_dir"]), str(world["data_dir"])), _ctx(out), 0)
    source = load_decomposition(out).run_config["data"]["source"]
    assert source["dataset"] == str(world["data_dir"].resolve()) and source["splits"] == {"train": "train"}
    assert (out / "target" / "tokenizer_config.json").is_file()  # names the EOS token
    capsys.readouterr()
    stores = {}
    for n_tasks in (1, 4):
        config = HARVEST.config_type.model_validate(
            {"n_tasks": n_tasks, "n_batches": 8, "batch_size": 2, "device": "cpu", "ci_threshold": 0.1}
        )
        harvest = tmp_path / f"harvest{n_tasks}"
        harvest.mkdir()
        ctx = StageContext("harvest", harvest, {"decompose": out}, num_tasks=n_tasks, seed=0)
        for index in range(n_tasks):
            HARVEST.run_task(config, ctx, index)
        HARVEST.merge(config, ctx)
        stores[n_tasks] = harvest / "harvest.duckdb"
    printed = capsys.readouterr().out
    assert printed.count("(built)") == 1 and printed.count("(reused)") >= 5  # 5 tasks + 2 merges after the first
    with HarvestStore.open(tmp_path / "harvest4") as store:
        assert store.alive_components()[0].key.startswith("transformer.h.0.mlp.c_fc:")
    sql = {
        "examples": "SELECT * FROM examples ORDER BY component, kind, rank",
        "token_stats": "SELECT * FROM token_stats ORDER BY component, direction, token",
        "counts": "SELECT component, key, firing_count, n_examples FROM components ORDER BY component",
    }
    with duckdb.connect(str(stores[1]), read_only=True) as one, duckdb.connect(str(stores[4]), read_only=True) as four:
        for name, query in sql.items():
            assert one.execute(query).fetchall() == four.execute(query).fetchall(), name


def test_missing_model_or_dataset_fails_with_a_clear_message(world, tmp_path: Path) -> None:
    with pytest.raises(HFModelMissingError, match="hf download") as err:
        run_task(_config(str(tmp_path / "no-such-model"), str(world["data_dir"])), _ctx(tmp_path / "a"), 0)
    e = err.value  # no chained library traceback
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)
    with pytest.raises(HFModelMissingError, match="not in the local cache"):
        run_task(_config("nobody/missing-gpt2", str(world["data_dir"])), _ctx(tmp_path / "b"), 0)
    with pytest.raises(HFDatasetMissingError, match="save_to_disk") as err:
        run_task(_config(str(world["model_dir"]), str(tmp_path / "no-such-data")), _ctx(tmp_path / "c"), 0)
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)
