"""Exact int64 counts of composite keys (component x token, component x component), held sparse or dense.

Both counters give the same answer: `keys()` (sorted) and `counts()` of the keys with a non-zero count,
which is what a shard stores (never a dense [C, V] table: at C = 40K, V = 50K that is 16 GB of mostly
zeros). How they hold counts while accumulating differs:

- SparseCounter holds only keys that occurred, as a sorted unique key vector plus counts; new keys go to a
  pending list that is folded in (sort + segment sum) when it outgrows the main table, so the amortised
  cost is O(n log n) in the number of distinct keys and memory is proportional to them.
- DenseCounter holds a flat int64 table of all n_keys and adds with index_add_: O(n) per batch, much faster
  (no sort), and used when the table is small (`make_counter`, below DENSE_LIMIT keys: 128 MB).

The merge uses SparseCounter to sum shards. A harvest task counts (component, token) firings with the
TokenFiringCounter pair at the end of this module, which take the batch's firing rows rather than keys.
"""

from __future__ import annotations

import torch
from torch import Tensor

DENSE_LIMIT = 1 << 24  # keys; a dense int64 table up to 128 MB
EXACT_FP32_LIMIT = 1 << 24  # integers up to this are exact in float32


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


class DenseTokenFiringCounter:
    """(component, token) firing counts for a task, added row-wise: one index_add_ of the batch's [N, C] firing
    rows into a [V, C] table per token column, instead of one scattered add per firing (~10x faster on CPU).

    The table is float32 for speed and exact: a batch adds at most N to an entry (a position's m predicted
    tokens are distinct), so it is flushed into an int64 total before it could pass 2**24.
    """

    def __init__(self, n_components: int, vocab_size: int, device: torch.device | str = "cpu") -> None:
        self.C, self.V = n_components, vocab_size
        self.window = torch.zeros((vocab_size, n_components), dtype=torch.float32, device=device)
        self.total = torch.zeros((vocab_size, n_components), dtype=torch.int64, device=device)
        self._window_bound = 0  # the largest value an entry of `window` can hold now

    def add(self, token_ids: Tensor, firing_rows: Tensor, fired_row: Tensor, fired_comp: Tensor) -> None:
        """token_ids [N, m]: the m distinct tokens of each position; firing_rows [N, C] float32 0/1; the firings
        as (fired_row, fired_comp) pairs (what the sparse counter reads)."""
        table = self.table_for(token_ids.shape[0])
        for j in range(token_ids.shape[1]):
            table.index_add_(0, token_ids[:, j], firing_rows)

    def table_for(self, n_positions: int) -> Tensor:
        """The float32 [V, C] table a batch of n positions adds its firing rows into (in place; each position adds
        at most 1 to an entry): flushed first when those adds could pass exact float32 integers."""
        if self._window_bound + n_positions >= EXACT_FP32_LIMIT:
            self._flush()
        self._window_bound += n_positions
        return self.window

    def _flush(self) -> None:
        self.total += self.window.round().to(torch.int64)
        self.window.zero_()
        self._window_bound = 0

    def _by_key(self) -> Tensor:
        """The counts as a flat table indexed by the composite key component * V + token."""
        self._flush()
        return self.total.T.reshape(-1)

    def keys(self) -> Tensor:
        return self._by_key().nonzero().squeeze(1)

    def counts(self) -> Tensor:
        table = self._by_key()
        return table[table != 0]


class SparseTokenFiringCounter:
    """(component, token) firing counts for large C x V: one composite key per (firing, token), counted sparse."""

    def __init__(self, n_components: int, vocab_size: int, device: torch.device | str = "cpu") -> None:
        self.V = vocab_size
        self.counter = SparseCounter(device)

    def add(self, token_ids: Tensor, firing_rows: Tensor, fired_row: Tensor, fired_comp: Tensor) -> None:
        self.counter.add(fired_comp.unsqueeze(1) * self.V + token_ids[fired_row])

    def keys(self) -> Tensor:
        return self.counter.keys()

    def counts(self) -> Tensor:
        return self.counter.counts()


def make_token_firing_counter(
    n_components: int, vocab_size: int, device: torch.device | str = "cpu"
) -> DenseTokenFiringCounter | SparseTokenFiringCounter:
    """Dense row-wise counting while a [V, C] table is small enough, sparse keys beyond."""
    cls = DenseTokenFiringCounter if n_components * vocab_size <= DENSE_LIMIT else SparseTokenFiringCounter
    return cls(n_components, vocab_size, device)
