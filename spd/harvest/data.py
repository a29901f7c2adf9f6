"""One task's slice of the corpus (or of a Hugging Face dataset's token cache, spd/data/token_cache.py: the same
token-file layout): the global batches it owns, gathered straight from the token file.

The window order is the one `spd.data.batches.BatchStream` defines (non-overlapping windows of `seq_len`
tokens, shuffled by `dataset_seed`, consecutive groups of `batch_size` are global batches 0, 1, ...), and
task i of n owns batches i, i+n, i+2n, ... (`BatchStream.shard_indices`). BatchStream holds the whole stream
in memory as int64; here the split's uint16 token file is memory-mapped and only this task's windows are
read, so a task never reads (let alone processes) another task's data. A test checks that both give the
same batches.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from spd.data.batches import Batch, derive_seed
from spd.data.source import TokenSource


@dataclass(frozen=True)
class SliceSpec:
    """Where one task's batches come from; recorded verbatim in its shard (the exact data slice)."""

    split: str
    seq_len: int
    batch_size: int
    dataset_seed: int
    n_batches: int  # global batches in the (whole) stream
    task: int
    n_tasks: int

    @property
    def batch_indices(self) -> range:
        return range(self.task, self.n_batches, self.n_tasks)


class CorpusSlice:
    """The batches of one task, read from a corpus split's token file on demand."""

    def __init__(self, corpus: TokenSource, spec: SliceSpec) -> None:
        self.corpus, self.spec = corpus, spec
        path = corpus.token_file(spec.split)
        if not path.is_file():
            raise FileNotFoundError(f"{corpus.path} has no token file for split {spec.split!r} ({path.name})")
        self._tokens = np.memmap(path, dtype=corpus.token_dtype, mode="r")
        n_windows = len(self._tokens) // spec.seq_len
        order = list(range(n_windows))
        random.Random(derive_seed("spd-batches", spec.dataset_seed, 0)).shuffle(order)
        if spec.n_batches * spec.batch_size > n_windows:
            raise ValueError(
                f"split {spec.split!r} holds {n_windows // spec.batch_size} whole batches of "
                f"{spec.batch_size} x {spec.seq_len} tokens, fewer than n_batches={spec.n_batches}"
            )
        self._order = order

    @staticmethod
    def available_batches(corpus: TokenSource, split: str, seq_len: int, batch_size: int) -> int:
        """Whole batches in a split (what n_batches=None means)."""
        n_tokens = int(corpus.manifest["n_tokens"][split])
        return (n_tokens // seq_len) // batch_size

    def window_ids(self, index: int) -> list[int]:
        """Window ids (window w covers stream positions [w*seq_len, (w+1)*seq_len)) of global batch `index`."""
        b = self.spec.batch_size
        return self._order[index * b : (index + 1) * b]

    def batch(self, index: int) -> Batch:
        windows = self.window_ids(index)
        starts = np.asarray(windows, dtype=np.int64) * self.spec.seq_len
        rows = np.stack([self._tokens[s : s + self.spec.seq_len] for s in starts]).astype(np.int64)
        return Batch(index, torch.from_numpy(rows), torch.from_numpy(starts))

    def __iter__(self) -> Iterator[Batch]:
        for index in self.spec.batch_indices:
            yield self.batch(index)

    def __len__(self) -> int:
        return len(self.spec.batch_indices)

    def slice_digest(self) -> str:
        """sha256 of this task's window ids in processing order: identifies the exact data slice."""
        h = hashlib.sha256()
        for index in self.spec.batch_indices:
            h.update(np.asarray(self.window_ids(index), dtype=np.int64).tobytes())
        return h.hexdigest()
