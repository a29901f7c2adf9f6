"""The story corpus, its planted features, its tokenizer and the batch iterator (spd/data)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from spd.data import FEATURE_IDS, BatchConfig, BatchStream, Corpus, CorpusConfig, build_corpus
from spd.data.batches import iter_epochs
from spd.data.features import FIXED_SUCCESSORS, SETTINGS, feature_words
from spd.data.generator import generate_document
from spd.data.io import atomic_directory

SMALL = CorpusConfig(seed=7, n_docs=300, val_fraction=0.1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return build_corpus(SMALL, tmp_path_factory.mktemp("corpus") / "c")


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(corpus: Corpus, tmp_path: Path) -> None:
    again = build_corpus(SMALL, tmp_path / "again")
    assert _files(again.path) == _files(corpus.path)
    other = build_corpus(SMALL.model_copy(update={"seed": 8}), tmp_path / "other")
    a, b = _files(corpus.path), _files(other.path)
    assert a.keys() == b.keys()
    assert a["documents.jsonl"] != b["documents.jsonl"]
    assert a["tokens_train.bin"] != b["tokens_train.bin"]


def test_documents_are_independent_of_corpus_size() -> None:
    small = [generate_document(3, i, 0.1, 4, 10).text for i in range(20)]
    assert small == [generate_document(3, i, 0.1, 4, 10).text for i in range(20)]
    assert small[5] != generate_document(4, 5, 0.1, 4, 10).text


def test_manifest_and_layout(corpus: Corpus) -> None:
    m = corpus.manifest
    assert m["config"] == SMALL.model_dump(mode="json")
    assert m["features"] == list(FEATURE_IDS)
    assert m["vocab_size"] == corpus.tokenizer.get_vocab_size() <= SMALL.vocab_size
    assert {"python", "tokenizers", "spd-pipeline"} <= m["versions"].keys()
    assert set(m["files"]) == {p.name for p in corpus.path.iterdir()} - {"manifest.json"}
    assert m["n_docs"]["train"] + m["n_docs"]["val"] == SMALL.n_docs
    for split in ("train", "val"):
        toks = corpus.tokens(split)
        assert len(toks) == m["n_tokens"][split]
        assert int((toks == corpus.eos_id).sum()) == m["n_docs"][split]  # one EOS after every document
    # no temp directories left beside the corpus; permissions are ordinary
    assert [p.name for p in corpus.path.parent.iterdir()] == ["c"]
    assert corpus.path.stat().st_mode & 0o055 == 0o055


def test_existing_corpus_is_reused_or_refused(corpus: Corpus) -> None:
    before = (corpus.path / "manifest.json").stat().st_mtime_ns
    assert build_corpus(SMALL, corpus.path).path == corpus.path
    assert (corpus.path / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError):
        build_corpus(SMALL.model_copy(update={"seed": 9}), corpus.path)


def test_atomic_directory_leaves_nothing_on_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "out") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_tokenizer_round_trip_and_single_token_feature_words(corpus: Corpus) -> None:
    tok = corpus.tokenizer
    for d in corpus.documents()[:50]:
        assert tok.decode(tok.encode(d["text"]).ids) == d["text"]
    odd = 'Zorblax said, "12 { weird } ünïcode?"\n  tabs\tand  spaces'
    assert tok.decode(tok.encode(odd).ids) == odd  # byte-level: lossless on any text
    # the stream is exactly the per-document encodings joined by EOS
    stream = corpus.tokens("train").tolist()
    for d in corpus.documents("train")[:20]:
        s, n = d["stream_start"], d["n_tokens"]
        assert stream[s : s + n] == tok.encode(d["text"]).ids and stream[s + n] == corpus.eos_id
    # every closed-list feature word (topic nouns, names, Quill, was/were, ...) is a single token
    for fid in feature_words():
        f = corpus.feature(fid)
        assert f["single_token"], (fid, {w: ids for w, ids in f["words"].items() if len(ids) != 1})


def test_planted_features_sit_at_recorded_positions(corpus: Corpus) -> None:
    docs = {d["doc"]: d for d in corpus.documents()}
    tok = corpus.tokenizer
    streams = {s: corpus.tokens(s) for s in ("train", "val")}
    occ = corpus.occurrences()
    assert {o["feature"] for o in occ} == set(FEATURE_IDS)  # every feature is planted somewhere
    for o in occ:
        d = docs[o["doc"]]
        assert o["split"] == d["split"]
        assert d["text"][o["char_start"] : o["char_end"]] == o["text"]
        assert o["stream_start"] == d["stream_start"] + o["tok_start"]
        span = streams[o["split"]][o["stream_start"] : o["stream_end"]].tolist()
        assert tok.decode(span).strip() == o["text"]  # tokens at the recorded positions spell the feature
    # single-token features: the token id at the position is the catalogue's id
    ids = {w: v[0] for w, v in corpus.feature("fixed_successor")["words"].items()}
    for o in corpus.occurrences("fixed_successor"):
        assert streams[o["split"]][o["stream_start"]].item() == ids[o["text"]]
        assert o["stream_end"] - o["stream_start"] == 1
        ctx = o["attrs"]["context"]
        assert FIXED_SUCCESSORS[ctx] == o["text"]
        assert docs[o["doc"]]["text"][o["attrs"]["context_char_start"] :].startswith(ctx + " " + o["text"])


def test_feature_ground_truth_is_exhaustive(corpus: Corpus) -> None:
    """The bigram, topic and agreement features hold everywhere, not just where recorded."""
    recorded: dict[int, list[int]] = {}
    for o in corpus.occurrences("fixed_successor"):
        if o["text"] == "Quill":
            recorded.setdefault(o["doc"], []).append(o["char_start"])
    for d in corpus.documents():
        text = d["text"]
        quills = [m.start() for m in re.finditer(r"\bQuill\b", text)]
        assert quills == recorded.get(d["doc"], []) and all(text[i - 10 : i] == "Professor " for i in quills)
        words = set(re.findall(r"[A-Za-z]+", text))
        for setting, info in SETTINGS.items():  # topic nouns of other settings never appear
            if setting != d["setting"]:
                assert not words & {*info["nouns"], *info["nouns"].values()}, (d["doc"], setting)
    for o in corpus.occurrences("agreement_verb"):
        assert o["text"] == ("were" if o["attrs"]["number"] == "plural" else "was")
    for o in corpus.occurrences("article_an"):
        assert o["attrs"]["next_word"][0] in "aeiou"
    intro = {o["doc"]: o for o in corpus.occurrences("invented_name_intro")}
    for o in corpus.occurrences("invented_name_repeat"):
        first = intro[o["doc"]]
        assert o["text"] == first["text"] and o["attrs"]["first_char_start"] == first["char_start"]
        assert o["tok_end"] - o["tok_start"] == first["tok_end"] - first["tok_start"]


def test_feature_mask_and_locate(corpus: Corpus) -> None:
    mask = corpus.feature_mask("story_end", "train")
    assert int(mask.sum()) > 0
    toks = corpus.tokens("train")
    assert corpus.tokenizer.decode(toks[mask][:3].tolist()).startswith(" The end.")
    d = corpus.documents("train")[3]
    assert corpus.locate("train", d["stream_start"] + 2) == (d["doc"], 2)
    with pytest.raises(IndexError):
        corpus.locate("train", len(toks))


def test_occurrence_file_is_duckdb_readable_jsonl(corpus: Corpus) -> None:
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    n = con.execute(f"select count(*) from read_json_auto('{corpus.path / 'occurrences.jsonl.gz'}')").fetchone()
    assert n[0] == corpus.manifest["n_occurrences"]


# -- batches -----------------------------------------------------------------------------------------


def _stream() -> torch.Tensor:
    return torch.arange(10_007) % 1000


def test_batches_are_deterministic_and_independent_of_the_training_seed() -> None:
    cfg = BatchConfig(seq_len=16, batch_size=8, dataset_seed=3)
    torch.manual_seed(0)
    random.seed(0)
    a = [b.tokens for b in BatchStream(_stream(), cfg)]
    state = torch.get_rng_state()
    torch.manual_seed(12345)  # another training seed, and RNG use in between, change nothing
    torch.rand(100)
    random.seed(99)
    b = [b.tokens for b in BatchStream(_stream(), cfg)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    torch.manual_seed(0)
    BatchStream(_stream(), cfg).batch(0)
    assert torch.equal(torch.get_rng_state(), state)  # the iterator neither reads nor advances the global RNG
    c = [b.tokens for b in BatchStream(_stream(), cfg.model_copy(update={"dataset_seed": 4}))]
    assert not torch.equal(a[0], c[0])
    e1 = BatchStream(_stream(), cfg, epoch=1).batch(0).tokens
    assert not torch.equal(a[0], e1)  # each epoch has its own order


def test_batches_are_windows_of_the_stream_with_provenance() -> None:
    s = _stream()
    stream = BatchStream(s, BatchConfig(seq_len=16, batch_size=8, dataset_seed=1))
    assert len(stream) == (10_007 // 16) // 8
    b = stream.batch(5)
    assert b.index == 5 and b.tokens.shape == (8, 16) and b.tokens.dtype == torch.int64
    for row, start in zip(b.tokens, b.starts, strict=True):
        assert start % 16 == 0 and torch.equal(row, s[start : start + 16])
    plain = BatchStream(s, BatchConfig(seq_len=16, batch_size=8, shuffle=False))
    assert torch.equal(plain.batch(0).tokens.reshape(-1), s[:128])


@pytest.mark.parametrize("n_tasks", [1, 3, 4, 7])
def test_shards_are_disjoint_and_cover_the_stream_once(n_tasks: int) -> None:
    cfg = BatchConfig(seq_len=16, batch_size=8, dataset_seed=5)
    full = BatchStream(_stream(), cfg)
    seen_batches: list[int] = []
    seen_starts: list[int] = []
    for task in range(n_tasks):
        shard = BatchStream(_stream(), cfg)  # each task builds its own stream object, as an array task would
        for b in shard.iter_shard(task, n_tasks):
            assert b.index % n_tasks == task
            assert torch.equal(b.tokens, full.batch(b.index).tokens)
            seen_batches.append(b.index)
            seen_starts.extend(b.starts.tolist())
    assert sorted(seen_batches) == list(range(len(full)))
    assert len(seen_starts) == len(set(seen_starts)) == len(full) * 8
    # one epoch with whole batches covers every whole window that fits in len(full) batches exactly once
    assert set(seen_starts) <= set(range(0, 10_007 - 15, 16))


def test_n_batches_limits_the_global_stream_before_sharding() -> None:
    cfg = BatchConfig(seq_len=16, batch_size=8, dataset_seed=5, n_batches=10)
    stream = BatchStream(_stream(), cfg)
    assert [list(stream.shard_indices(t, 3)) for t in range(3)] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(ValueError, match="only"):
        BatchStream(_stream(), cfg.model_copy(update={"n_batches": 10_000}))
    with pytest.raises(ValueError):
        stream.shard_indices(3, 3)


def test_iter_epochs_continues_with_new_orders() -> None:
    cfg = BatchConfig(seq_len=16, batch_size=8, dataset_seed=5)
    n = len(BatchStream(_stream(), cfg))
    it = iter_epochs(_stream(), cfg)
    first = torch.cat([next(it).starts for _ in range(n)]).tolist()
    second = torch.cat([next(it).starts for _ in range(n)]).tolist()
    for epoch in (first, second):  # each epoch: distinct whole windows (the remainder window differs per epoch)
        assert len(set(epoch)) == len(epoch) == n * 8 and set(epoch) <= set(range(0, 10_007 - 15, 16))
    assert first != second


def test_corpus_batches_end_to_end(corpus: Corpus) -> None:
    stream = BatchStream(corpus.tokens("train"), BatchConfig(seq_len=33, batch_size=4, dataset_seed=0))
    b = stream.batch(0)
    doc, pos = corpus.locate("train", int(b.starts[0]))
    assert 0 <= doc < SMALL.n_docs and pos >= 0
    json.dumps(corpus.catalogue)  # the catalogue is plain JSON
