"""Exact co-firing counts of a harvest task: how often components a < b fire on the same token.

Two ways to count, with identical results (every pair that co-fires at least once, its exact count):

- sparse (`SparsePairCounter`): per token, the pairs among the k components that fire there, counted in a hash
  table of the pairs seen so far. Work is k (k - 1) / 2 per token and memory is 16 bytes (at most half-full
  table: <= 32) per distinct pair seen, never C^2: at C = 40K with k ~ 100-500 this is the only workable way.
  On the CPU a compiled loop (numba) fills an open-addressing table; elsewhere (or with kernels forced to torch)
  the batch's pair keys are generated with torch ops and summed in a `SparseCounter`.
- dense: F^T F per batch for the batch's [N, C] 0/1 firing matrix F, added into an int64 [C, C] table. Only the
  row blocks on and above the diagonal are multiplied (about half the work). Two exact ways to multiply:
  int8 x int8 -> int32 (`torch._int_mm`, CPU only: 2-3x faster than fp32 with AVX512-VNNI, slower without), or
  fp32 (exact, since every entry is an integer <= N < 2**24). Its cost is C^2 / 2 multiply-adds per token
  whatever fires, and its table is 8 C^2 bytes, so it is only a candidate while that table is at most
  DENSE_TABLE_LIMIT bytes; it wins at small C and dense firing, and on GPUs.

Which one a task uses is chosen on its first batch, per task as before (`method`: "sparse", "int8" or "fp32",
recorded in the shard): on the CPU the first batch is counted sparse (timed), one dense row block of each kind is
timed and scaled to the whole triangle, and the fastest wins (the sparse counts of that batch move into the dense
table when dense wins). On other devices dense fp32 is used while its table fits, sparse otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from spd.harvest.counters import SparseCounter
from spd.harvest.jit import compiled, numpy_view
from spd.harvest.keys import MIX_MULTIPLIER

MATMUL_BLOCK = 128  # rows of F^T F per matmul: smaller blocks skip more of the lower triangle
SCAN_BLOCK = 1024  # rows of the table scanned at once when listing the non-zero pairs
DENSE_TABLE_LIMIT = 1 << 30  # bytes: a dense int64 [C, C] table is a candidate up to C ~ 11.5K
METHODS = ("sparse", "int8", "fp32")

# (firing [N, C] as bool for int8, as 0/1 float32 for fp32, r0, r1) -> the block F[:, r0:r1]^T F[:, r0:] as an integer
BlockProduct = Callable[[Tensor, int, int], Tensor]


def _fp32_block(rows: Tensor, r0: int, r1: int) -> Tensor:
    return (rows[:, r0:r1].T @ rows[:, r0:]).to(torch.int64)


def _int8_block(firing: Tensor, r0: int, r1: int) -> Tensor:
    as_int8 = firing.view(torch.int8)  # a bool tensor is 0/1 bytes: a free reinterpretation
    # the transposed view as it is: copying it contiguous first cost more than the product (0.95 vs 0.59 ms, C=256)
    return torch._int_mm(as_int8[:, r0:r1].T, as_int8[:, r0:])


PRODUCTS: dict[str, BlockProduct] = {"fp32": _fp32_block, "int8": _int8_block}


def _operand(method: str, firing: Tensor, firing_rows: Tensor | None) -> Tensor:
    """The firing matrix as the product `method` reads it (the caller's 0/1 float32 copy when it has one)."""
    if method == "int8":
        return firing
    return firing_rows if firing_rows is not None else firing.to(torch.float32)


def firing_lists(firing: Tensor) -> tuple[Tensor, Tensor]:
    """The batch's firings as CSR: row offsets [N + 1] and the firing components of each row, ascending."""
    rows, comps = firing.nonzero(as_tuple=True)  # row-major: rows ascending, components ascending within a row
    per_row = torch.bincount(rows, minlength=firing.shape[0])
    offsets = torch.zeros(firing.shape[0] + 1, dtype=torch.int64, device=firing.device)
    offsets[1:] = torch.cumsum(per_row, 0)
    return offsets, comps


def pair_keys_torch(offsets: Tensor, comps: Tensor, n_components: int) -> Tensor:
    """Every same-row pair (a < b) of a CSR firing list as the key a * C + b (the torch reference of the loop)."""
    n = comps.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=comps.device)
    index = torch.arange(n, device=comps.device)
    row_of = torch.repeat_interleave(torch.arange(offsets.numel() - 1, device=comps.device), offsets.diff())
    later = offsets[1:][row_of] - index - 1  # partners of firing i: the later firings of its row
    first = torch.repeat_interleave(index, later)
    starts = torch.cumsum(later, 0) - later  # where firing i's partners begin in `first`
    second = first + 1 + (torch.arange(first.numel(), device=comps.device) - starts[first])
    return comps[first].long() * n_components + comps[second].long()


_MIX = np.uint64(MIX_MULTIPLIER)
_EMPTY = -1


@compiled
def _count_rows(offsets, comps, n_components, row, table, n_used, limit, shift):  # fmt: skip
    """Add the pairs of rows row.. into the open-addressing table ([slots, 2]: key, count side by side, so a probe
    touches one cache line; key -1 = empty slot; linear probing); stop before a row that could take the table past
    `limit` used slots. Returns (next row, slots used)."""
    mask = table.shape[0] - 1
    n_rows = offsets.shape[0] - 1
    while row < n_rows:
        lo, hi = offsets[row], offsets[row + 1]
        k = hi - lo
        if n_used + k * (k - 1) // 2 > limit:
            return row, n_used
        for i in range(lo, hi):
            base = comps[i] * n_components
            for j in range(i + 1, hi):
                key = base + comps[j]
                slot = np.int64((np.uint64(key) * _MIX) >> shift)
                while True:
                    held = table[slot, 0]
                    if held == key:
                        table[slot, 1] += 1
                        break
                    if held == _EMPTY:
                        table[slot, 0] = key
                        table[slot, 1] = 1
                        n_used += 1
                        break
                    slot = (slot + 1) & mask
        row += 1
    return row, n_used


@compiled
def _rehash(table, new_table, shift):  # fmt: skip
    mask = new_table.shape[0] - 1
    for i in range(table.shape[0]):
        key = table[i, 0]
        if key == _EMPTY:
            continue
        slot = np.int64((np.uint64(key) * _MIX) >> shift)
        while new_table[slot, 0] != _EMPTY:
            slot = (slot + 1) & mask
        new_table[slot, 0] = key
        new_table[slot, 1] = table[i, 1]


class SparsePairCounter:
    """Exact counts of the pairs that co-fire, held as a hash table of the pairs seen (see the module docstring).

    CPU only (numba); the table doubles when half full, so memory is 16-32 bytes per distinct pair seen."""

    def __init__(self, n_components: int, capacity: int = 1 << 16) -> None:
        self.C = n_components
        self._alloc(capacity)
        self.n_used = 0

    def _alloc(self, capacity: int) -> None:
        self.bits = max(int(capacity - 1).bit_length(), 4)
        self.table = np.full((1 << self.bits, 2), _EMPTY, dtype=np.int64)

    def _grow(self, needed: int) -> None:
        old = self.table
        self._alloc(max(2 * old.shape[0], 2 * needed))
        _rehash(old, self.table, np.uint64(64 - self.bits))

    def add(self, firing: Tensor) -> None:
        """Count one batch's [N, C] bool firing matrix (CPU)."""
        offsets, comps = firing_lists(firing)
        off, cs = numpy_view(offsets), numpy_view(comps.to(torch.int64))
        row, n_rows = 0, firing.shape[0]
        while row < n_rows:
            limit = self.table.shape[0] // 2
            row, self.n_used = _count_rows(
                off, cs, self.C, row, self.table, self.n_used, limit, np.uint64(64 - self.bits)
            )
            if row < n_rows:  # the next row does not fit at half load: double (or more, for one huge row)
                k = int(off[row + 1] - off[row])
                self._grow(self.n_used + k * (k - 1) // 2)

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """(a, b, count), a < b, sorted by (a, b)."""
        used = self.table[:, 0] != _EMPTY
        keys, counts = self.table[used, 0], self.table[used, 1]
        order = np.argsort(keys, kind="stable")
        keys_t, counts_t = torch.from_numpy(keys[order]), torch.from_numpy(counts[order])
        return (keys_t // self.C).to(torch.int32), (keys_t % self.C).to(torch.int32), counts_t

    @property
    def nbytes(self) -> int:
        return self.table.nbytes


class TorchPairCounter:
    """The same exact counts with torch ops on any device: the batch's pair keys summed in a SparseCounter."""

    def __init__(self, n_components: int, device: torch.device | str) -> None:
        self.C = n_components
        self.counter = SparseCounter(device)

    def add(self, firing: Tensor) -> None:
        offsets, comps = firing_lists(firing)
        self.counter.add(pair_keys_torch(offsets, comps, self.C))

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        keys = self.counter.keys()
        return (
            (keys // self.C).to("cpu", torch.int32),
            (keys % self.C).to("cpu", torch.int32),
            self.counter.counts().to("cpu"),
        )


class CofiringCounter:
    """Exact co-firing counts (a, b), a < b, accumulated batch by batch, sparse or dense (see the module docstring).

    `method` may be set before the first batch to force one ("sparse", "int8", "fp32"); `torch_only` counts the
    sparse way with torch ops even on the CPU (the harvest's "torch" kernels)."""

    def __init__(self, n_components: int, device: torch.device | str, torch_only: bool = False) -> None:
        self.C = n_components
        self.device = torch.device(device)
        self.torch_only = torch_only
        self.table: Tensor | None = None  # the dense int64 [C, C] table, once a dense method is chosen
        self.sparse: SparsePairCounter | TorchPairCounter | None = None
        self.method: str | None = None  # "sparse", "int8" or "fp32", chosen on the first batch

    @property
    def dense_fits(self) -> bool:
        return 8 * self.C * self.C <= DENSE_TABLE_LIMIT

    def add(self, firing: Tensor, firing_rows: Tensor | None = None) -> None:
        """Count one batch: its [N, C] bool firing matrix (N < 2**24 tokens), and the same as 0/1 float32 when the
        caller has it (the fp32 product reads that instead of converting the bool again)."""
        if self.method is None:
            self.method = self._choose(firing, firing_rows)  # may count this batch (sparse) on the way
            return
        if self.method == "sparse":
            self._sparse().add(firing)
            return
        self._dense_add(firing, firing_rows)

    def _sparse(self) -> SparsePairCounter | TorchPairCounter:
        if self.sparse is None:
            on_cpu = self.device.type == "cpu" and not self.torch_only
            self.sparse = SparsePairCounter(self.C) if on_cpu else TorchPairCounter(self.C, self.device)
        return self.sparse

    def _dense_add(self, firing: Tensor, firing_rows: Tensor | None) -> None:
        if self.table is None:
            self.table = torch.zeros((self.C, self.C), dtype=torch.int64, device=self.device)
        product, operand = PRODUCTS[self.method], _operand(self.method, firing, firing_rows)
        for r0 in range(0, self.C, MATMUL_BLOCK):
            r1 = min(r0 + MATMUL_BLOCK, self.C)
            self.table[r0:r1, r0:] += product(operand, r0, r1)

    def _choose(self, firing: Tensor, firing_rows: Tensor | None) -> str:
        """Pick the method on the first batch and count that batch with it."""
        if self.device.type != "cpu":
            method = "fp32" if self.dense_fits else "sparse"
            self._count_first(method, firing, firing_rows)
            return method
        start = time.perf_counter()
        self._sparse().add(firing)  # the first batch, counted sparse
        timings = {"sparse": time.perf_counter() - start}
        if self.dense_fits:
            n_blocks = -(-self.C // MATMUL_BLOCK)
            triangle = (n_blocks + 1) / 2  # the first block spans all C columns, the later ones fewer
            for name, product in PRODUCTS.items():
                operand = _operand(name, firing, firing_rows)
                for _ in range(2):  # the second call is timed: the first pays for allocation and kernel set-up
                    begin = time.perf_counter()
                    product(operand, 0, min(MATMUL_BLOCK, self.C))
                    timings[name] = (time.perf_counter() - begin) * triangle
        method = min(timings, key=timings.__getitem__)
        if method != "sparse":  # move the first batch's counts into the dense table
            a, b, n = self.sparse.pairs()
            self.sparse = None
            self.table = torch.zeros((self.C, self.C), dtype=torch.int64, device=self.device)
            self.table[a.long(), b.long()] = n
        return method

    def _count_first(self, method: str, firing: Tensor, firing_rows: Tensor | None) -> None:
        if method == "sparse":
            self._sparse().add(firing)
        else:
            self.method = method
            self._dense_add(firing, firing_rows)

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """Non-zero counts above the diagonal as (a, b, count) on the CPU, a < b, sorted by (a, b)."""
        if self.table is None:
            if self.sparse is None:
                empty = torch.zeros(0, dtype=torch.int32)
                return empty, empty, torch.zeros(0, dtype=torch.int64)
            return self.sparse.pairs()
        parts_a, parts_b, parts_n = [], [], []
        cols = torch.arange(self.C, device=self.device)
        for r0 in range(0, self.C, SCAN_BLOCK):
            block = self.table[r0 : r0 + SCAN_BLOCK]
            rows = torch.arange(r0, r0 + block.shape[0], device=self.device)
            a, b = ((block != 0) & (cols.unsqueeze(0) > rows.unsqueeze(1))).nonzero(as_tuple=True)
            parts_a.append((a + r0).to("cpu", torch.int32))
            parts_b.append(b.to("cpu", torch.int32))
            parts_n.append(block[a, b].to("cpu", torch.int64))
        return torch.cat(parts_a), torch.cat(parts_b), torch.cat(parts_n)
