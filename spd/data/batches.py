"""Fixed-length token windows in batches, shuffled by their own dataset seed, shardable across array tasks.

A token stream (1-D tensor: documents joined by EOS) is cut into non-overlapping windows of `seq_len` tokens
(the remainder is dropped). The windows of epoch `e` are put in an order drawn from (dataset_seed, e) alone,
with a private `random.Random` (stable across Python and torch versions; the global torch and Python RNGs
are neither read nor advanced), so the data order is independent of the training / SPD seed. Consecutive
groups of `batch_size` windows in that order are the global batches 0, 1, 2, ... (the last partial group is
dropped).

Sharding: task `i` of `n` owns the global batches `i, i + n, i + 2n, ...` below `n_batches`; it computes
them directly and never touches another task's batches. The n shards are disjoint and together cover the
stream's batches exactly once, for any n. Each `Batch` carries its global index and the stream position of
every row, so a harvest can record exact provenance (see `Corpus.locate`).

For next-token training use `seq_len = n_ctx + 1` and split inputs/targets; SPD and harvest feed whole windows.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor


class BatchConfig(BaseModel):
    """How a token stream becomes batches. `dataset_seed` is deliberately separate from any training seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq_len: int = Field(..., ge=1, description="Tokens per window (row).")
    batch_size: int = Field(..., ge=1, description="Windows per batch.")
    dataset_seed: int = Field(0, description="Seed of the window order; nothing else uses it.")
    shuffle: bool = Field(True, description="Shuffle window order (False: stream order).")
    n_batches: int | None = Field(
        None, ge=1, description="Global batches in the stream (before sharding); None = every whole batch."
    )


@dataclass(frozen=True)
class Batch:
    index: int  # global batch index
    tokens: Tensor  # [batch_size, seq_len] int64
    starts: Tensor  # [batch_size] int64: stream position of each row's first token


def decomposition_windows(
    run_config: dict, stage: str, split: str | None, seq_len: int | None, dataset_seed: int | None
) -> tuple[str, int, int]:
    """(split, seq_len, dataset_seed) of the windows a later stage reads: its own settings where given, else the
    decomposition's (run config `data`: train_split, seq_len, dataset_seed). ValueError when the decomposition has
    no token windows (not a language model)."""
    data = run_config.get("data", {})
    if data.get("kind") != "lm":
        raise ValueError(
            f"{stage} needs a language-model decomposition with token windows; this one was trained on data of "
            f"kind {data.get('kind')!r}"
        )
    return (
        split or data.get("train_split", "train"),
        seq_len or int(data["seq_len"]),
        dataset_seed if dataset_seed is not None else int(data.get("dataset_seed", 0)),
    )


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and platforms, unlike hash())."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class BatchStream:
    """The batches of one epoch of a token stream; see the module docstring."""

    def __init__(self, tokens: Tensor, config: BatchConfig, epoch: int = 0) -> None:
        if tokens.dim() != 1:
            raise ValueError(f"expected a 1-D token stream, got shape {tuple(tokens.shape)}")
        self.tokens = tokens.to(torch.int64)
        self.config = config
        self.epoch = epoch
        self.n_windows = len(tokens) // config.seq_len
        available = self.n_windows // config.batch_size
        if available == 0:
            raise ValueError(
                f"stream of {len(tokens)} tokens holds no batch of {config.batch_size} x {config.seq_len} tokens"
            )
        if config.n_batches is not None and config.n_batches > available:
            raise ValueError(f"n_batches={config.n_batches} but the stream holds only {available} whole batches")
        self.n_batches = config.n_batches if config.n_batches is not None else available
        order = list(range(self.n_windows))
        if config.shuffle:
            random.Random(derive_seed("spd-batches", config.dataset_seed, epoch)).shuffle(order)
        self._order = torch.tensor(order[: self.n_batches * config.batch_size], dtype=torch.int64)
        self._offsets = torch.arange(config.seq_len, dtype=torch.int64)

    def __len__(self) -> int:
        return self.n_batches

    def batch(self, index: int) -> Batch:
        if not 0 <= index < self.n_batches:
            raise IndexError(f"batch {index} outside 0..{self.n_batches - 1}")
        b = self.config.batch_size
        starts = self._order[index * b : (index + 1) * b] * self.config.seq_len
        return Batch(index, self.tokens[starts[:, None] + self._offsets], starts)

    def __iter__(self) -> Iterator[Batch]:
        for i in range(self.n_batches):
            yield self.batch(i)

    def shard_indices(self, task: int, n_tasks: int) -> range:
        """Global batch indices owned by array task `task` of `n_tasks` (0-based)."""
        if n_tasks < 1 or not 0 <= task < n_tasks:
            raise ValueError(f"task {task} of {n_tasks} is not a valid shard")
        return range(task, self.n_batches, n_tasks)

    def iter_shard(self, task: int, n_tasks: int) -> Iterator[Batch]:
        for i in self.shard_indices(task, n_tasks):
            yield self.batch(i)


def iter_epochs(tokens: Tensor, config: BatchConfig, start_epoch: int = 0) -> Iterator[Batch]:
    """Batches of epoch start_epoch, start_epoch + 1, ... forever (each epoch in its own order)."""
    epoch = start_epoch
    while True:
        yield from BatchStream(tokens, config, epoch)
        epoch += 1
