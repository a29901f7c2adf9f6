"""Hugging Face datasets as token windows: tokenized once into a token cache (spd/data/token_cache.py) that
harvest and attributions read like the story corpus; the formats a user meets give the same stream, and the
cache is built once and shared."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spd.data.token_cache import HFTokensSpec, TokenCache, build_token_cache, cache_key
from spd.data.tokenizer import EOS, train_tokenizer
from tests.conftest import REPO_ROOT

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "ran",
    "sat",
    "on",
    "mat",
    "big",
    "small",
    "red",
    "blue",
    "happy",
    "sad",
    "and",
    "then",
    "went",
    "home",
    "park",
    "tree",
]
SPLITS = {"train": "train", "val": "test"}


def _docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Documents, a tokenizer trained on them, and the same data as jsonl, parquet and a save_to_disk directory."""
    import datasets

    root = tmp_path_factory.mktemp("hfdata")
    docs = {"train": _docs(300, 0), "test": _docs(40, 1)}
    tok = train_tokenizer(docs["train"], vocab_size=300, min_frequency=1)
    tok.save(str(root / "tokenizer.json"))
    (root / "jsonl").mkdir()
    for split, texts in docs.items():
        (root / "jsonl" / f"{split}.jsonl").write_text("".join(json.dumps({"story": t}) + "\n" for t in texts))
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict({"story": t}) for s, t in docs.items()})
    (root / "parquet").mkdir()
    for split in docs:
        dd[split].to_parquet(str(root / "parquet" / f"{split}.parquet"))
    dd.save_to_disk(str(root / "saved"))
    ids = {s: [e.ids for e in tok.encode_batch(t, add_special_tokens=False)] for s, t in docs.items()}
    tokenized = datasets.DatasetDict({s: datasets.Dataset.from_dict({"input_ids": v}) for s, v in ids.items()})
    tokenized.save_to_disk(str(root / "pretokenized"))
    eos = tok.token_to_id(EOS)
    expected = {s: np.array([t for doc in v for t in [*doc, eos]], dtype=np.int64) for s, v in ids.items()}
    return {"root": root, "tokenizer": root / "tokenizer.json", "expected": expected}


def _spec(world: dict, where: str, **kw) -> HFTokensSpec:
    return HFTokensSpec(dataset=str(world["root"] / where), column=kw.pop("column", "story"), splits=SPLITS, **kw)


@pytest.mark.parametrize(
    ("where", "kw"),
    [
        ("jsonl", {}),
        ("parquet", {}),
        ("saved", {}),
        ("pretokenized", {"column": "input_ids", "is_tokenized": True}),
        ("jsonl", {"streaming": True}),
    ],
    ids=["jsonl", "parquet", "save_to_disk", "pre-tokenized", "streaming"],
)
def test_every_format_gives_the_exact_token_stream(world: dict, tmp_path: Path, where: str, kw: dict) -> None:
    cache = build_token_cache(_spec(world, where, **kw), world["tokenizer"], root=tmp_path, log=lambda _: None)
    for ours, theirs in SPLITS.items():
        tokens = cache.tokens(ours).numpy()
        assert np.array_equal(tokens, world["expected"][theirs]), ours
        assert cache.manifest["n_tokens"][ours] == len(world["expected"][theirs])  # exact token counts
    train = cache.tokens("train")
    assert cache.token_dtype == "<u2" and cache.token_file("train").stat().st_size == 2 * len(train)
    docs = cache.documents("train")
    assert len(docs) == 300 and docs[1]["stream_start"] == docs[0]["n_tokens"] + 1  # EOS between documents
    assert len(train) == sum(d["n_tokens"] + 1 for d in docs)


def test_cache_is_built_once_and_shared_by_content(world: dict, tmp_path: Path) -> None:
    logs: list[str] = []
    first = build_token_cache(_spec(world, "jsonl"), world["tokenizer"], root=tmp_path, log=logs.append)
    second = build_token_cache(_spec(world, "jsonl"), world["tokenizer"], root=tmp_path, log=logs.append)
    assert first.path == second.path and logs[-1].endswith("(reused)")
    assert sum(line.endswith("(built)") for line in logs) == 1
    import shutil

    shutil.copytree(world["root"] / "jsonl", tmp_path / "copy")  # the same files elsewhere: the same cache
    copy = HFTokensSpec(dataset=str(tmp_path / "copy"), column="story", splits=SPLITS)
    assert cache_key(copy, world["tokenizer"], 0) == cache_key(_spec(world, "jsonl"), world["tokenizer"], 0)
    assert cache_key(copy, world["tokenizer"], 0) != cache_key(copy, world["tokenizer"], 1)  # another EOS
    (tmp_path / "copy" / "test.jsonl").write_text(json.dumps({"story": "a changed file."}) + "\n")
    assert cache_key(copy, world["tokenizer"], 0) != cache_key(_spec(world, "jsonl"), world["tokenizer"], 0)


def test_concurrent_builders_build_once(world: dict, tmp_path: Path) -> None:
    """Two processes asking for the same cache at once (array tasks of one stage): one builds, one reads it."""
    code = (
        "import sys; from pathlib import Path; from spd.data.token_cache import HFTokensSpec, build_token_cache;"
        f"spec = HFTokensSpec(dataset={str(world['root'] / 'jsonl')!r}, column='story', splits={SPLITS!r});"
        f"build_token_cache(spec, Path({str(world['tokenizer'])!r}), root=Path({str(tmp_path)!r}))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(o.strip().splitlines()[-1].rsplit("(", 1)[-1] for o in outs) == ["built)", "reused)"]
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1
    assert np.array_equal(TokenCache(next(p for p in tmp_path.iterdir() if p.is_dir())).tokens("val").numpy(),
                          world["expected"]["test"])  # fmt: skip


def test_max_documents_limits_a_large_or_streamed_dataset(world: dict, tmp_path: Path) -> None:
    spec = _spec(world, "jsonl", streaming=True).model_copy(update={"max_documents": 10})
    cache = build_token_cache(spec, world["tokenizer"], root=tmp_path, log=lambda _: None)
    assert len(cache.documents("train")) == 10
    first_ten = world["expected"]["train"][: cache.manifest["n_tokens"]["train"]]
    assert np.array_equal(cache.tokens("train").numpy(), first_ten)


def test_a_single_arrow_or_txt_file_is_a_dataset(world: dict, tmp_path: Path) -> None:
    import datasets

    texts = _docs(20, 5)
    datasets.Dataset.from_dict({"story": texts}).to_parquet(str(tmp_path / "one.parquet"))  # also via arrow below
    arrow = datasets.Dataset.from_dict({"story": texts})
    arrow_dir = tmp_path / "arrow_src"
    arrow.save_to_disk(str(arrow_dir))
    arrow_file = next(arrow_dir.glob("*.arrow"))
    (tmp_path / "one.txt").write_text("\n".join(texts) + "\n")
    streams = []
    for path, column in ((arrow_file, "story"), (tmp_path / "one.txt", "text"), (tmp_path / "one.parquet", "story")):
        spec = HFTokensSpec(dataset=str(path), column=column, splits={"train": "train"})
        streams.append(build_token_cache(spec, world["tokenizer"], root=tmp_path / "c", log=lambda _: None).tokens())
    assert all(np.array_equal(s.numpy(), streams[0].numpy()) for s in streams) and len(streams[0]) > 20


def test_documents_are_recorded_as_written_even_with_eos_in_their_text(world: dict, tmp_path: Path) -> None:
    """A document whose text holds the EOS token is still one document (boundaries are not read off EOS)."""
    texts = ["the cat sat.", f"the dog {EOS} ran.", "home."]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text("".join(json.dumps({"story": t}) + "\n" for t in texts))
    spec = HFTokensSpec(dataset=str(tmp_path / "d"), column="story", splits={"train": "train"})
    cache = build_token_cache(spec, world["tokenizer"], root=tmp_path / "c", log=lambda _: None)
    docs = cache.documents("train")
    assert len(docs) == 3 and docs[2]["stream_start"] == docs[1]["stream_start"] + docs[1]["n_tokens"] + 1


def test_without_file_locks_the_cache_is_still_built(world: dict, tmp_path: Path, monkeypatch) -> None:
    import errno

    import spd.data.token_cache as token_cache

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(token_cache, "_flock", no_locks)
    logs: list[str] = []
    cache = build_token_cache(_spec(world, "jsonl"), world["tokenizer"], root=tmp_path, log=logs.append)
    assert any("no file lock" in line for line in logs) and logs[-1].endswith("(built)")
    assert np.array_equal(cache.tokens("val").numpy(), world["expected"]["test"])


def test_token_ids_outside_the_vocabulary_are_refused(world: dict, tmp_path: Path) -> None:
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"ids": [[1, 2, -100]]})}).save_to_disk(
        str(tmp_path / "d")
    )
    spec = HFTokensSpec(dataset=str(tmp_path / "d"), column="ids", is_tokenized=True, splits={"train": "train"})
    with pytest.raises(ValueError, match="-100 is outside the vocabulary"):
        build_token_cache(spec, world["tokenizer"], root=tmp_path / "c", log=lambda _: None)
    assert not [p for p in (tmp_path / "c").iterdir() if p.is_dir()]  # nothing half-built under a final name
