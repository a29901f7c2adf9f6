"""Exact int64 counts of composite keys (component x token, component x component), held sparse or dense.

Both counters give the same answer: `keys()` (sorted) and `counts()` of the keys with a non-zero count,
which is what a shard stores (never a dense [C, V] table: at C = 40K, V = 50K that is 16 GB of mostly
zeros). How they hold counts while accumulating differs:

- SparseCounter holds only keys that occurred, as a sorted unique key vector plus counts; new keys go to a
  pending list that is folded in (sort + segment sum) when it outgrows the main table, so the amortised
  cost is O(n log n) in the number of distinct keys and memory is proportional to them.
- DenseCounter holds a flat int64 table of all n_keys and adds with index_add_: O(n) per batch, much faster
  (no sort), and used when the table is small (`make_counter`, below DENSE_LIMIT keys: 128 MB).

The merge uses SparseCounter to sum shards.
"""

from __future__ import annotations

import torch
from torch import Tensor

DENSE_LIMIT = 1 << 24  # keys; a dense int64 table up to 128 MB


class SparseCounter:
    """Counts of int64 keys held sparse (see the module docstring)."""

    def __init__(self, device: torch.device | str = "cpu", min_pending: int = 1 << 16) -> None:
        self.device = torch.device(device)
        self._keys = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._counts = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._pending: list[tuple[Tensor, Tensor]] = []
        self._pending_size = 0
        self._min_pending = min_pending

    def add(self, keys: Tensor) -> None:
        """Count every element of `keys` once."""
        if keys.numel() == 0:
            return
        unique, counts = torch.unique(keys.reshape(-1).to(torch.int64), return_counts=True)
        self.add_counts(unique, counts)

    def add_counts(self, keys: Tensor, counts: Tensor) -> None:
        """Add `counts[i]` to `keys[i]` (keys may repeat)."""
        if keys.numel() == 0:
            return
        self._pending.append((keys.to(self.device, torch.int64), counts.to(self.device, torch.int64)))
        self._pending_size += keys.numel()
        if self._pending_size > max(self._min_pending, self._keys.numel()):
            self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        keys = torch.cat([self._keys, *(k for k, _ in self._pending)])
        counts = torch.cat([self._counts, *(c for _, c in self._pending)])
        self._pending, self._pending_size = [], 0
        unique, inverse = torch.unique(keys, return_inverse=True)
        summed = torch.zeros(unique.numel(), dtype=torch.int64, device=self.device)
        summed.index_add_(0, inverse, counts)
        nonzero = summed != 0
        self._keys, self._counts = unique[nonzero], summed[nonzero]

    def keys(self) -> Tensor:
        self._compact()
        return self._keys

    def counts(self) -> Tensor:
        self._compact()
        return self._counts


class DenseCounter:
    """Counts of keys in [0, n_keys) held in a flat int64 table (see the module docstring)."""

    def __init__(self, n_keys: int, device: torch.device | str = "cpu") -> None:
        self.table = torch.zeros(n_keys, dtype=torch.int64, device=device)

    def add(self, keys: Tensor) -> None:
        flat = keys.reshape(-1).to(torch.int64)
        self.table.index_add_(0, flat, torch.ones_like(flat))

    def add_counts(self, keys: Tensor, counts: Tensor) -> None:
        self.table.index_add_(0, keys.reshape(-1).to(torch.int64), counts.reshape(-1).to(torch.int64))

    def keys(self) -> Tensor:
        return self.table.nonzero().squeeze(1)

    def counts(self) -> Tensor:
        return self.table[self.table != 0]


def make_counter(n_keys: int, device: torch.device | str = "cpu") -> SparseCounter | DenseCounter:
    """A dense counter when n_keys is small enough, else a sparse one."""
    return DenseCounter(n_keys, device) if n_keys <= DENSE_LIMIT else SparseCounter(device)
