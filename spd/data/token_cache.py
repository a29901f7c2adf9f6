"""A Hugging Face dataset tokenized once into a memory-mapped token cache that harvest and attributions read
exactly as they read the story corpus.

Layout (a directory under `<cache root>/tokens/<key>/`, written as a whole: temp directory + rename):

    manifest.json       format, the source (dataset, subset, column, is_tokenized, splits), the tokenizer's
                        sha256, vocab_size, eos_id, dtype, n_tokens per split, library versions
    tokenizer.json      the tokenizer the text was tokenized with
    tokens_<split>.bin  the split's token stream, little-endian uint16 (vocabularies up to 65,536) or uint32:
                        each document's tokens followed by EOS, documents in dataset order
    documents_<split>.npy  int64 [n_documents, 2]: each document's first stream position and token count
                        (read off the EOS separators), so examples can name their document

The key is a sha256 over the source fields, the data's identity (the sha256 of every file of a local dataset,
the fingerprint of a hub dataset in the local cache) and the tokenizer's sha256: every stage and run that needs
the same windows shares one cache, and a changed file makes a new one. Concurrent builders (array tasks of one
stage, two stages at once) take an exclusive lock on `<key>.lock`: one builds, the others wait and then read it.

Windows are cut from a split's stream as from the corpus (spd/data/batches.py: non-overlapping windows of
seq_len tokens, ordered by dataset_seed, task i of n owning global batches i, i + n, ...). This is this project's
rule, not the reference's per-map-batch concatenation, so windows differ from the reference's, their tokens do not.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from spd.data.hf_source import HFTokensSpec
from spd.data.io import atomic_directory, json_bytes, write_file
from spd.data.token_files import TokenFiles
from spd.utils import cache_root, sha256_file

FORMAT = "spd-hf-token-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
_EOS_NAMES = ("<|endoftext|>", "[EOS]", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>")


def eos_token_id(tokenizer_file: Path) -> int:
    """The EOS id: tokenizer_config.json's eos_token beside the tokenizer when there is one, else a common name."""
    tok = Tokenizer.from_file(str(tokenizer_file))
    config = Path(tokenizer_file).with_name("tokenizer_config.json")
    names: tuple[str, ...] = _EOS_NAMES
    if config.is_file():
        eos = json.loads(config.read_text()).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        names = (eos, *names) if isinstance(eos, str) else names
    for name in names:
        if (i := tok.token_to_id(name)) is not None:
            return int(i)
    raise ValueError(f"{tokenizer_file}: no EOS token found (looked for {', '.join(names)})")


def _data_identity(spec: HFTokensSpec) -> str:
    """A local dataset's files by relative name, size and modification time (hidden files and directories, such
    as a download tool's metadata, left out): cheap enough for every task to compute, and changed whenever a
    file is; a copy made with its times kept (cp -p, shutil.copytree) shares the cache. A hub dataset in the local
    cache: each split's fingerprint; a streamed hub dataset: its name only (a new version needs `run --force`)."""
    path = Path(spec.dataset).expanduser()
    if path.exists():
        base = path.parent if path.is_file() else path  # names inside the dataset, not where it lies
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(base).parts)]
        stamps = "".join(f"{p.relative_to(base)}:{p.stat().st_size}:{p.stat().st_mtime_ns};" for p in files)
        return hashlib.sha256(stamps.encode()).hexdigest()
    if spec.streaming:
        return f"hub:{spec.dataset}"
    from spd.lm.hf import HFDatasetConfig, load_hf_dataset

    prints = []
    for split in sorted(spec.splits.values()):
        cfg = HFDatasetConfig(dataset=spec.dataset, subset=spec.subset, split=split, column=spec.column)
        fingerprint = getattr(load_hf_dataset(cfg), "_fingerprint", None)
        if fingerprint is None:
            raise ValueError(f"{spec.dataset} split {split!r} has no fingerprint to key its token cache by")
        prints.append(str(fingerprint))
    return "hub:" + ",".join(prints)


def check_dataset_available(spec: HFTokensSpec) -> None:
    """FileNotFoundError saying what to download and where, when the dataset is neither a local path nor in the
    local Hugging Face cache (a streaming hub dataset is only checked when it is read)."""
    from spd.lm.hf import HFDatasetConfig, HFResourceMissingError, load_hf_dataset

    path = Path(spec.dataset).expanduser()
    if path.exists() or (spec.streaming and not spec.dataset.startswith(("/", ".", "~"))):
        return
    try:
        for split in sorted(set(spec.splits.values())):
            load_hf_dataset(HFDatasetConfig(dataset=spec.dataset, subset=spec.subset, split=split, column=spec.column))
    except HFResourceMissingError as err:
        raise FileNotFoundError(str(err)) from None
    except ImportError as err:  # the `hf` extra (datasets) is not installed
        raise FileNotFoundError(f"reading {spec.dataset} needs the `datasets` package: {err}") from None


def cache_key(spec: HFTokensSpec, tokenizer_file: Path, eos: int) -> str:
    """By content: the data (see `_data_identity`; a local dataset's path is left out, so a copy elsewhere shares
    the cache), the reading settings, the tokenizer and the EOS id that separates documents."""
    fields = spec.model_dump(mode="json")
    if Path(spec.dataset).expanduser().exists():
        fields.pop("dataset")
    identity = {"spec": fields, "data": _data_identity(spec), "tokenizer": sha256_file(tokenizer_file), "eos": eos}
    material = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(f"{FORMAT}:{FORMAT_VERSION}:{material}".encode()).hexdigest()[:24]


class TokenCache(TokenFiles):
    """Read access to a built token cache: the interface harvest and attributions use on the story corpus."""

    kind = "token cache"
    format = FORMAT

    @property
    def token_dtype(self) -> str:
        return str(self.manifest["dtype"])

    def token_file(self, split: str) -> Path:
        if split not in self.manifest["n_tokens"]:
            raise ValueError(
                f"token cache {self.path} has no split {split!r}; it has {sorted(self.manifest['n_tokens'])}"
            )
        return self.path / f"tokens_{split}.bin"

    def documents(self, split: str) -> list[dict[str, int]]:
        """The split's documents as the story corpus lists them: doc, stream_start, n_tokens (EOS excluded)."""
        docs = np.load(self.path / f"documents_{split}.npy")
        return [{"doc": i, "stream_start": int(s), "n_tokens": int(n)} for i, (s, n) in enumerate(docs)]


def _flock(f: Any, operation: int) -> None:
    fcntl.flock(f, operation)


@contextmanager
def _exclusive(lock_path: Path, log: Callable[[str], None]) -> Iterator[None]:
    """An exclusive lock on lock_path, or none where the filesystem has no locks (NFS mounted nolock, Lustre
    without flock): builders then race, one rename wins and the others read the winner's cache (below)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        try:
            _flock(f, fcntl.LOCK_EX)  # other builders of the same key wait here, then find it built
        except OSError as err:
            log(f"token cache: no file lock on {lock_path.parent} ({err.strerror}); building without one")
            yield
            return
        try:
            yield
        finally:
            _flock(f, fcntl.LOCK_UN)


def _versions() -> dict[str, str]:
    out = {}
    for name in ("datasets", "tokenizers", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _documents(spec: HFTokensSpec, split: str, tok: Tokenizer, chunk: int = 512) -> Iterator[list[int]]:
    """Each document's token ids, in dataset order (tokenized in chunks; pre-tokenized columns as they are)."""
    from spd.lm.hf import HFDatasetConfig, load_hf_dataset

    cfg = HFDatasetConfig(
        dataset=spec.dataset, subset=spec.subset, split=split, column=spec.column, is_tokenized=spec.is_tokenized,
        streaming=spec.streaming, max_documents=spec.max_documents,
    )  # fmt: skip
    texts: list[str] = []
    for i, row in enumerate(load_hf_dataset(cfg)):
        if spec.max_documents is not None and i >= spec.max_documents:
            break
        if spec.is_tokenized:
            yield [int(t) for t in row[spec.column]]
            continue
        texts.append(row[spec.column])
        if len(texts) == chunk:
            yield from (e.ids for e in tok.encode_batch(texts, add_special_tokens=False))
            texts = []
    if texts:
        yield from (e.ids for e in tok.encode_batch(texts, add_special_tokens=False))


def _write_split(
    spec: HFTokensSpec, split: str, tok: Tokenizer, eos: int, vocab: int, dtype: str, tokens: Path, docs: Path
) -> int:
    """Stream the split's documents into `tokens` (each followed by EOS) a chunk at a time, so memory stays
    bounded whatever the dataset's size; `docs` gets each document's start and length, recorded as written (an
    EOS inside a document's text does not split it). Returns the number of tokens."""
    bounds: list[tuple[int, int]] = []
    n = 0
    buffer: list[int] = []
    with open(tokens, "wb") as f:
        for ids in _documents(spec, split, tok):
            bad = [t for t in ids if t < 0 or t >= vocab]
            if bad:
                raise ValueError(
                    f"{spec.dataset} split {split!r}: token id {bad[0]} is outside the vocabulary 0..{vocab - 1}"
                )
            bounds.append((n, len(ids)))
            buffer += ids
            buffer.append(eos)
            n += len(ids) + 1
            if len(buffer) >= 1 << 20:
                f.write(np.asarray(buffer, dtype=dtype).tobytes())
                buffer = []
        f.write(np.asarray(buffer, dtype=dtype).tobytes())
        f.flush()
        os.fsync(f.fileno())
    np.save(docs, np.asarray(bounds, dtype=np.int64).reshape(-1, 2))
    return n


def build_token_cache(
    spec: HFTokensSpec, tokenizer_file: Path, root: Path | None = None, log: Callable[[str], None] = print
) -> TokenCache:
    """The token cache of `spec` tokenized with `tokenizer_file`: reused when built, else built once (locked)."""
    root = Path(root) if root is not None else cache_root() / "tokens"
    tok = Tokenizer.from_file(str(tokenizer_file))
    eos = spec.eos_id if spec.eos_id is not None else eos_token_id(tokenizer_file)
    key = cache_key(spec, tokenizer_file, eos)
    out = root / key
    if (out / MANIFEST).is_file():  # built: no lock needed (and a read-only shared cache works)
        log(f"token cache {out} (reused)")
        return TokenCache(out)
    with _exclusive(root / f"{key}.lock", log):
        if (out / MANIFEST).is_file():
            log(f"token cache {out} (reused)")
            return TokenCache(out)
        for stale in root.glob(f".{key}.*.tmp"):  # a builder killed earlier (time limit, memory): its partial copy
            shutil.rmtree(stale, ignore_errors=True)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        dtype = "<u2" if vocab <= 1 << 16 else "<u4"
        n_tokens = {}
        try:
            with atomic_directory(out) as tmp:
                for ours, theirs in spec.splits.items():
                    if not re.fullmatch(r"[A-Za-z0-9_.-]+", ours):
                        raise ValueError(f"split name {ours!r}: letters, digits, '_', '.', '-' only")
                    tokens, docs = tmp / f"tokens_{ours}.bin", tmp / f"documents_{ours}.npy"
                    n_tokens[ours] = _write_split(spec, theirs, tok, eos, vocab, dtype, tokens, docs)
                    log(f"token cache: {spec.dataset} split {theirs!r} -> {ours}: {n_tokens[ours]:,} tokens")
                write_file(tmp / TOKENIZER_FILE, Path(tokenizer_file).read_bytes())
                manifest = {
                    "format": FORMAT, "format_version": FORMAT_VERSION, "key": key,
                    "source": spec.model_dump(mode="json"), "tokenizer_sha256": sha256_file(tokenizer_file),
                    "vocab_size": vocab, "eos_id": eos, "dtype": dtype, "n_tokens": n_tokens, "versions": _versions(),
                }  # fmt: skip
                write_file(tmp / MANIFEST, json_bytes(manifest))
        except FileExistsError:  # another node built it meanwhile (no lock shared across nodes): use theirs
            log(f"token cache {out} (built by another task)")
            return TokenCache(out)
        log(f"token cache {out} (built)")
        return TokenCache(out)
