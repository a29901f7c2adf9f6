"""Hugging Face loading (spd/lm/hf.py), fully offline: a tiny random GPT-2 and datasets written by the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spd.data import BatchConfig, BatchStream, CorpusConfig, build_corpus
from spd.lm.hf import (
    HFDatasetConfig,
    HFDatasetMissingError,
    HFModelConfig,
    HFModelMissingError,
    HFResourceMissingError,
    load_hf_causal_lm,
    load_hf_dataset,
    load_hf_token_stream,
)
from spd.lm.model import output_logits

transformers = pytest.importorskip("transformers", reason="needs the `hf` extra")
datasets = pytest.importorskip("datasets", reason="needs the `hf` extra")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory) -> None:
    home = tmp_path_factory.getbasetemp() / "hf_home"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A corpus (for its tokenizer and texts), a tiny GPT-2 saved with that tokenizer, and two datasets on disk."""
    root = tmp_path_factory.mktemp("hf")
    corpus = build_corpus(CorpusConfig(seed=2, n_docs=120, val_fraction=0.1), root / "corpus")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=corpus.tokenizer, eos_token="<|endoftext|>")
    cfg = transformers.GPT2Config(
        vocab_size=corpus.vocab_size,
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=corpus.eos_id,
        eos_token_id=corpus.eos_id,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    model_dir = root / "tiny-gpt2"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    texts = [d["text"] for d in corpus.documents("train")][:40]
    saved = root / "stories_saved"
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(saved))
    jsonl = root / "stories.jsonl"
    jsonl.write_text("".join(json.dumps({"story": t}) + "\n" for t in texts))
    return {
        "corpus": corpus,
        "model_dir": model_dir,
        "saved": saved,
        "jsonl": jsonl,
        "texts": texts,
        "reference": model.eval(),
    }


def test_tiny_gpt2_and_on_disk_datasets_give_batches(world: dict) -> None:
    model, tokenizer = load_hf_causal_lm(HFModelConfig(model=str(world["model_dir"])))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    stream = load_hf_token_stream(HFDatasetConfig(dataset=str(world["saved"])), tokenizer)
    # the same stream the corpus format uses: each document's tokens, then EOS
    corpus = world["corpus"]
    expected = []
    for t in world["texts"]:
        expected += [*corpus.tokenizer.encode(t).ids, corpus.eos_id]
    assert stream.tolist() == expected
    from_jsonl = load_hf_token_stream(HFDatasetConfig(dataset=str(world["jsonl"]), column="story"), tokenizer)
    assert torch.equal(from_jsonl, stream)
    batches = BatchStream(stream, BatchConfig(seq_len=32, batch_size=4, dataset_seed=0))
    batch = batches.batch(0)
    with torch.no_grad():
        logits = output_logits(model(batch.tokens))
        reference = world["reference"](batch.tokens).logits
    assert logits.shape == (4, 32, corpus.vocab_size)
    assert torch.allclose(logits, reference)
    limited = load_hf_token_stream(HFDatasetConfig(dataset=str(world["saved"]), max_documents=3), tokenizer)
    assert int((limited == corpus.eos_id).sum()) == 3


def test_pretokenized_column_and_bad_column(world: dict, tmp_path: Path) -> None:
    corpus = world["corpus"]
    ids = [corpus.tokenizer.encode(t).ids for t in world["texts"][:5]]
    path = tmp_path / "tok"
    datasets.Dataset.from_dict({"input_ids": ids}).save_to_disk(str(path))
    _, tokenizer = load_hf_causal_lm(HFModelConfig(model=str(world["model_dir"])))
    stream = load_hf_token_stream(HFDatasetConfig(dataset=str(path), column="input_ids", is_tokenized=True), tokenizer)
    assert stream.tolist() == [i for doc in ids for i in [*doc, corpus.eos_id]]
    with pytest.raises(ValueError, match="no column 'story'"):
        load_hf_dataset(HFDatasetConfig(dataset=str(path), column="story"))


def _assert_clean(err: HFResourceMissingError) -> None:
    assert err.__cause__ is None  # no chained library traceback
    assert err.__context__ is None or err.__suppress_context__


def test_missing_local_model_says_what_to_download_and_where(tmp_path: Path) -> None:
    where = tmp_path / "models" / "gpt2"
    with pytest.raises(HFModelMissingError) as info:
        load_hf_causal_lm(HFModelConfig(model=str(where)))
    msg = str(info.value)
    assert str(where) in msg and "hf download" in msg and "--local-dir" in msg
    _assert_clean(info.value)


def test_missing_hub_model_offline_says_what_to_download_and_where() -> None:
    with pytest.raises(HFModelMissingError) as info:
        load_hf_causal_lm(HFModelConfig(model="someorg/not-a-real-model"))
    msg = str(info.value)
    assert "hf download someorg/not-a-real-model" in msg and "HF_HUB_OFFLINE" in msg and "HF_HOME" in msg
    _assert_clean(info.value)


def test_missing_datasets_say_what_to_download_and_where(tmp_path: Path) -> None:
    with pytest.raises(HFDatasetMissingError) as info:
        load_hf_dataset(HFDatasetConfig(dataset="someorg/no-such-dataset"))
    msg = str(info.value)
    assert "someorg/no-such-dataset" in msg and "save_to_disk" in msg and "offline" in msg.lower()
    _assert_clean(info.value)
    where = tmp_path / "nothing_here"
    with pytest.raises(HFDatasetMissingError) as info:
        load_hf_dataset(HFDatasetConfig(dataset=str(where)))
    assert str(where) in str(info.value) and "save_to_disk" in str(info.value)
    _assert_clean(info.value)


def test_missing_split_is_a_clear_config_error(world: dict, tmp_path: Path) -> None:
    path = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})}).save_to_disk(str(path))
    assert len(load_hf_dataset(HFDatasetConfig(dataset=str(path)))) == 1
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_hf_dataset(HFDatasetConfig(dataset=str(path), split="validation"))
