"""The synthetic story corpus on disk: build it from a seed, load it, look up planted features.

Directory layout (written as a whole by `build_corpus`: temp directory + os.replace):

    manifest.json       format, generator version, config (seed, sizes), counts, feature ids, library
                        versions, sha256 of every other file
    tokenizer.json      byte-level BPE trained on the train split (spd/data/tokenizer.py)
    features.json       the feature catalogue: FeatureSpec fields + for closed word lists each word's token ids
                        (`single_token` says whether every word is one token) + occurrence counts per split
    documents.jsonl     one line per document: doc, split, setting, hero, text, stream_start, n_tokens
    occurrences.jsonl.gz  (gzip, zero mtime) one line per planted occurrence: feature, doc, split, char_start/char_end (in the
                        document text), tok_start/tok_end (token indices in the document), stream_start/
                        stream_end (positions in the split's token stream), text, attrs
    tokens_<split>.bin  the split's token stream, uint16 little-endian: each document's tokens followed by EOS

All spans are half-open. Building is deterministic: the same config gives byte-identical files.
"""

from __future__ import annotations

import bisect
import gzip
import json
import platform
import sys
from array import array
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from spd.data.config import CorpusConfig as CorpusConfig
from spd.data.features import FEATURE_IDS, FEATURES, feature_words
from spd.data.generator import Document, generate_document
from spd.data.io import atomic_directory, gzip_bytes, json_bytes, jsonl_bytes, write_file
from spd.data.token_files import TokenFiles
from spd.data.tokenizer import EOS, eos_id, train_tokenizer, word_token_ids
from spd.utils import sha256_file

FORMAT = "spd-story-corpus"
FORMAT_VERSION = 1
GENERATOR_VERSION = 1  # bump whenever generated text, features or tokenizer training change
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
OCCURRENCES = "occurrences.jsonl.gz"


def _versions() -> dict[str, str]:
    import tokenizers

    try:
        pkg = metadata.version("spd-pipeline")
    except metadata.PackageNotFoundError:
        pkg = "unknown"
    return {"python": platform.python_version(), "tokenizers": tokenizers.__version__, "spd-pipeline": pkg}


def _token_span(offsets: list[tuple[int, int]], starts: list[int], a: int, b: int) -> tuple[int, int]:
    """Indices [i, j) of the tokens whose character span overlaps [a, b)."""
    i = bisect.bisect_right(starts, a) - 1  # last token starting at or before a
    while i + 1 < len(offsets) and offsets[i][1] <= a:
        i += 1
    j = bisect.bisect_left(starts, b)  # first token starting at or after b
    if not (0 <= i < j):
        raise AssertionError(f"no token overlaps characters [{a}, {b})")
    return i, j


def _pack_uint16(ids: list[int]) -> bytes:
    arr = array("H", ids)
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tobytes()


def _write_corpus(config: CorpusConfig, out: Path) -> None:
    docs: list[Document] = [
        generate_document(config.seed, i, config.val_fraction, config.min_sentences, config.max_sentences)
        for i in range(config.n_docs)
    ]
    for split in SPLITS:
        if not any(d.split == split for d in docs):
            raise ValueError(f"n_docs={config.n_docs} leaves the {split} split empty; use more documents")
    tok = train_tokenizer(
        [d.text for d in docs if d.split == "train"], config.vocab_size, config.tokenizer_min_frequency
    )
    eos = eos_id(tok)
    encodings = tok.encode_batch([d.text for d in docs], add_special_tokens=False)

    streams: dict[str, list[int]] = {s: [] for s in SPLITS}
    doc_rows, occ_rows = [], []
    counts: dict[str, dict[str, int]] = {f: dict.fromkeys(SPLITS, 0) for f in FEATURE_IDS}
    for d, enc in zip(docs, encodings, strict=True):
        stream = streams[d.split]
        start = len(stream)
        offsets = [tuple(o) for o in enc.offsets]
        starts = [o[0] for o in offsets]
        stream.extend(enc.ids)
        stream.append(eos)
        doc_rows.append(
            {
                "doc": d.doc_id,
                "split": d.split,
                "setting": d.setting,
                "hero": d.hero,
                "stream_start": start,
                "n_tokens": len(enc.ids),
                "text": d.text,
            }
        )
        for o in d.occurrences:
            i, j = _token_span(offsets, starts, o.char_start, o.char_end)
            occ_rows.append(
                {
                    "feature": o.feature,
                    "doc": d.doc_id,
                    "split": d.split,
                    "char_start": o.char_start,
                    "char_end": o.char_end,
                    "tok_start": i,
                    "tok_end": j,
                    "stream_start": start + i,
                    "stream_end": start + j,
                    "text": d.text[o.char_start : o.char_end],
                    "attrs": o.attrs,
                }
            )
            counts[o.feature][d.split] += 1

    words = feature_words()
    catalogue = []
    for spec in FEATURES:
        entry = spec.to_json()
        entry["n_occurrences"] = counts[spec.id]
        if spec.id in words:
            ids = {w: word_token_ids(tok, w) for w in words[spec.id]}
            entry["words"] = ids
            entry["single_token"] = all(len(v) == 1 for v in ids.values())
        catalogue.append(entry)

    tok.save(str(out / "tokenizer.json"))
    write_file(out / "features.json", json_bytes({"eos": EOS, "eos_id": eos, "features": catalogue}))
    write_file(out / "documents.jsonl", jsonl_bytes(doc_rows))
    write_file(out / OCCURRENCES, gzip_bytes(jsonl_bytes(occ_rows)))
    for split in SPLITS:
        write_file(out / f"tokens_{split}.bin", _pack_uint16(streams[split]))

    files = sorted(p.name for p in out.iterdir())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generator_version": GENERATOR_VERSION,
        "config": config.model_dump(mode="json"),
        "vocab_size": tok.get_vocab_size(),
        "eos_id": eos,
        "n_docs": {s: sum(d.split == s for d in docs) for s in SPLITS},
        "n_chars": {s: sum(len(d.text) for d in docs if d.split == s) for s in SPLITS},
        "n_tokens": {s: len(streams[s]) for s in SPLITS},
        "n_occurrences": len(occ_rows),
        "features": list(FEATURE_IDS),
        "versions": _versions(),
        "files": {name: sha256_file(out / name) for name in files},
    }
    write_file(out / MANIFEST, json_bytes(manifest))


def _matches(path: Path, config: CorpusConfig) -> bool:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (
        m.get("format") == FORMAT
        and m.get("format_version") == FORMAT_VERSION
        and m.get("generator_version") == GENERATOR_VERSION
        and m.get("config") == config.model_dump(mode="json")
    )


def build_corpus(config: CorpusConfig, out_dir: str | Path, overwrite: bool = False) -> Corpus:
    """Generate the corpus, train its tokenizer and write the directory atomically.

    An existing directory built from the same config (and generator version) is reused as it is; one built
    from another config raises FileExistsError unless `overwrite`, which replaces it atomically.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        if _matches(out_dir, config):
            return Corpus(out_dir)
        if not overwrite:
            raise FileExistsError(f"{out_dir} holds a different corpus (or none); pass overwrite=True to replace it")
    try:
        with atomic_directory(out_dir, overwrite=overwrite) as tmp:
            _write_corpus(config, tmp)
    except FileExistsError:
        if not _matches(out_dir, config):  # a concurrent builder of the same config is fine; anything else not
            raise
    return Corpus(out_dir)


class Corpus(TokenFiles):
    """Read access to a built corpus directory (all read-only)."""

    kind = "story corpus"
    format = FORMAT

    @property
    def config(self) -> CorpusConfig:
        return CorpusConfig(**self.manifest["config"])

    token_dtype = "<u2"  # every split's token file (a vocabulary of at most 65,536)

    def token_file(self, split: str) -> Path:
        """The split's token stream on disk (what harvest memory-maps)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.path / f"tokens_{split}.bin"

    @cached_property
    def catalogue(self) -> dict[str, Any]:
        return json.loads((self.path / "features.json").read_text())

    def feature(self, feature_id: str) -> dict[str, Any]:
        for f in self.catalogue["features"]:
            if f["id"] == feature_id:
                return f
        raise KeyError(f"unknown feature {feature_id!r}")

    @cached_property
    def _documents(self) -> list[dict[str, Any]]:
        with open(self.path / "documents.jsonl") as f:
            return [json.loads(line) for line in f]

    def documents(self, split: str | None = None) -> list[dict[str, Any]]:
        return [d for d in self._documents if split is None or d["split"] == split]

    @cached_property
    def _occurrences(self) -> list[dict[str, Any]]:
        data = gzip.decompress((self.path / OCCURRENCES).read_bytes())
        return [json.loads(line) for line in data.splitlines()]

    def occurrences(self, feature: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
        if feature is not None and feature not in FEATURE_IDS:
            raise KeyError(f"unknown feature {feature!r}; known: {', '.join(FEATURE_IDS)}")
        return [
            o
            for o in self._occurrences
            if (feature is None or o["feature"] == feature) and (split is None or o["split"] == split)
        ]

    def feature_mask(self, feature: str, split: str = "train") -> torch.Tensor:
        """Bool tensor over the split's token stream: True where a token lies in an occurrence of `feature`."""
        mask = torch.zeros(int(self.manifest["n_tokens"][split]), dtype=torch.bool)
        for o in self.occurrences(feature, split):
            mask[o["stream_start"] : o["stream_end"]] = True
        return mask

    @cached_property
    def _doc_starts(self) -> dict[str, tuple[list[int], list[int]]]:
        out: dict[str, tuple[list[int], list[int]]] = {s: ([], []) for s in SPLITS}
        for d in self._documents:
            out[d["split"]][0].append(d["stream_start"])
            out[d["split"]][1].append(d["doc"])
        return out

    def locate(self, split: str, position: int) -> tuple[int, int]:
        """(document id, token index in that document) of a position in the split's stream (EOS = n_tokens)."""
        starts, ids = self._doc_starts[split]
        k = bisect.bisect_right(starts, position) - 1
        if k < 0 or position >= int(self.manifest["n_tokens"][split]):
            raise IndexError(f"position {position} outside the {split} stream")
        return ids[k], position - starts[k]
