"""Exact co-firing counts of a harvest task: how often components a < b fire on the same token.

Two ways to count, with identical results (every pair that co-fires at least once, its exact count):

- sparse (`SparsePairCounter`): the pairs among the k components that fire on each token, counted in a hash
  table of the pairs seen so far. Work is k (k - 1) / 2 per token and memory is 16 bytes (at most half-full
  table: <= 32) per distinct pair seen, never C^2: at C = 40K with k ~ 100-500 this is the only workable way.
  On the CPU a compiled loop (numba) takes a batch one component a at a time: a's partners b > a over all its
  firings of the batch are counted in a [C] scratch row (in cache), then each distinct (a, b) is added to an
  open-addressing table once, so a pair that recurs within the batch costs one table update; elsewhere (or with
  kernels forced to torch) the batch's pair keys are generated with torch ops and summed in a `SparseCounter`
  (device memory, not capped).
  The CPU table is capped at SPARSE_TABLE_LIMIT bytes: a long task at C = 40K can see ~C^2 / 2 = 800M distinct
  pairs (~25 GB), more than a node should give one task. Where doubling would pass the cap, the table's entries
  are spilled to a file, sorted by key (a "run": `PairRun`), and the table is cleared and reused. A pair may so
  be in several runs and the final table; its exact count is the sum over them (the shard lists every part, the
  merge sums them). Memory, all told: the table up to the cap; 1.5x the cap while its last doubling rehashes;
  at most half the cap more during a spill (the sort order of the used keys); at the end of a task a table at its
  cap (or one that spilled before) is spilled once more rather than listed in memory.
- dense: F^T F per batch for the batch's [N, C] 0/1 firing matrix F, added into an int64 [C, C] table. Only the
  row blocks on and above the diagonal are multiplied (about half the work). Two exact ways to multiply:
  int8 x int8 -> int32 (`torch._int_mm`, CPU only: 2-3x faster than fp32 with AVX512-VNNI, slower without), or
  fp32 (exact, since every entry is an integer <= N < 2**24). Its cost is C^2 / 2 multiply-adds per token
  whatever fires, and its table is 8 C^2 bytes, so it is only a candidate while that table is at most
  DENSE_TABLE_LIMIT bytes; it wins at small C and dense firing, and on GPUs.

Which one a task uses is chosen on its first batch, per task as before (`method`: "sparse", "int8" or "fp32",
recorded in the shard): on the CPU the first batch is counted sparse (its second half timed), one dense row
block of each kind is timed and scaled to the whole triangle, and the fastest wins (the sparse counts of that batch
move into the dense table when dense wins). On other devices dense fp32 is used while its table fits, sparse otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from spd.harvest.counters import SparseCounter
from spd.harvest.jit import compiled, numpy_view
from spd.harvest.keys import MIX_MULTIPLIER

MATMUL_BLOCK = 128  # rows of F^T F per matmul: smaller blocks skip more of the lower triangle
SCAN_BLOCK = 1024  # rows of the table scanned at once when listing the non-zero pairs
DENSE_TABLE_LIMIT = 1 << 30  # bytes: a dense int64 [C, C] table is a candidate up to C ~ 11.5K
SPARSE_TABLE_LIMIT = 1 << 30  # bytes: the CPU pair table's cap (64M slots, 32M pairs at half load); past it, spill
SPILL_CHUNK = 1 << 20  # pairs gathered, converted and written (or read back) at a time: 16 MB
MIN_TABLE_SLOTS = 16
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


FiringLists = tuple[Tensor, Tensor]  # a batch's firings as CSR: row offsets [N + 1], components (ascending per row)


def firing_lists(firing: Tensor) -> FiringLists:
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
def _by_component(offsets, comps, n_components):  # fmt: skip
    """The batch's firings grouped by component (CSC beside the rows' CSR): for component a, entries
    starts[a]:starts[a + 1] give the position of each of its firings in `comps` and the end of that firing's row, so
    its partners b > a on that token are comps[position + 1:row_end] (rows list their components ascending)."""
    n_firings = comps.shape[0]
    starts = np.zeros(n_components + 1, np.int64)
    for k in range(n_firings):
        starts[comps[k] + 1] += 1
    for c in range(n_components):
        starts[c + 1] += starts[c]
    fill = starts[:-1].copy()
    position, row_end = np.empty(n_firings, np.int64), np.empty(n_firings, np.int64)
    for n in range(offsets.shape[0] - 1):
        end = offsets[n + 1]
        for k in range(offsets[n], end):
            a = comps[k]
            position[fill[a]], row_end[fill[a]] = k, end
            fill[a] += 1
    return starts, position, row_end


@compiled
def _count_pairs(comps, starts, position, row_end, n_components, a, t, n_touched, partners, touched, table, n_used,
                 limit, shift):  # fmt: skip
    """Add the batch's pairs (a, b), a < b, into the open-addressing table ([slots, 2]: key, count side by side, so a
    probe touches one cache line; key -1 = empty slot; linear probing), one component a at a time: its partners'
    counts over all its firings of the batch gathered in `partners` (a [C] scratch row, zero between batches; the
    partners met listed in `touched`), then each distinct (a, b) added to the table once with its batch count. A pair
    that recurs within the batch so costs one table update, not one per token (at 16K components, L0 128: 26 ms per
    2048-token batch against 52-56 for one update per token and pair).

    Resumable: stops, without adding it, at the first pair that is new to a table already holding `limit` pairs, and
    returns its cursor (a, t, n_touched) and the slots used; the caller grows or spills the table and calls again
    with the cursor, `partners` and `touched` as left (the counts not yet added are still there), so even a
    component with more partners than the table can hold is counted exactly. At the end `a` is n_components."""
    mask = table.shape[0] - 1
    while a < n_components:
        if n_touched == 0:  # gather a's partners (a resumed cursor has them already)
            for f in range(starts[a], starts[a + 1]):
                for j in range(position[f] + 1, row_end[f]):
                    b = comps[j]
                    if partners[b] == 0:
                        touched[n_touched] = b
                        n_touched += 1
                    partners[b] += 1
        base = a * n_components
        while t < n_touched:
            b = touched[t]
            key = base + b
            slot = np.int64((np.uint64(key) * _MIX) >> shift)
            while True:
                held = table[slot, 0]
                if held == key:
                    table[slot, 1] += partners[b]
                    break
                if held == _EMPTY:
                    if n_used >= limit:
                        return a, t, n_touched, n_used
                    table[slot, 0] = key
                    table[slot, 1] = partners[b]
                    n_used += 1
                    break
                slot = (slot + 1) & mask
            partners[b] = 0
            t += 1
        a, t, n_touched = a + 1, 0, 0
    return a, t, n_touched, n_used


@compiled
def _compact(table):  # fmt: skip
    """Move the used entries to the front of the table (in place, order kept); returns how many there are. The table
    is no longer a hash table afterwards: only for a table about to be cleared."""
    n = 0
    for s in range(table.shape[0]):
        if table[s, 0] != _EMPTY:
            table[n, 0] = table[s, 0]
            table[n, 1] = table[s, 1]
            n += 1
    return n


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


@dataclass(frozen=True)
class PairRun:
    """One spill of a `SparsePairCounter`: `n` pairs sorted by (a, b), in a raw file of three columns back to back,
    a (int32 [n]), b (int32 [n]), count (int64 [n]), little-endian: each column is one contiguous byte range, so a
    shard member that concatenates runs copies bytes instead of converting them (spd.harvest.shard.write_shard)."""

    path: Path
    n: int

    COLUMNS = (("a", np.dtype("<i4")), ("b", np.dtype("<i4")), ("count", np.dtype("<i8")))

    def column_span(self, column: str) -> tuple[int, np.dtype, int]:
        """(byte offset, dtype, byte length) of one column in the file."""
        offset = 0
        for name, dtype in self.COLUMNS:
            if name == column:
                return offset, dtype, self.n * dtype.itemsize
            offset += self.n * dtype.itemsize
        raise KeyError(column)

    def column_bytes(self, column: str, chunk_rows: int | None = None) -> Iterator[bytes]:
        """The column's bytes, at most `chunk_rows` values at a time (bounded memory whatever the run's size)."""
        offset, dtype, length = self.column_span(column)
        step = (chunk_rows or SPILL_CHUNK) * dtype.itemsize
        with open(self.path, "rb") as f:
            f.seek(offset)
            while length > 0:
                buf = f.read(min(step, length))
                if not buf:
                    raise EOFError(f"{self.path} ends before its {column} column")
                length -= len(buf)
                yield buf

    def chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(a, b, count) at most `chunk_rows` pairs at a time, in order."""
        columns = [self.column_bytes(name, chunk_rows) for name, _ in self.COLUMNS]
        for parts in zip(*columns, strict=True):
            # copies: writable arrays (torch.from_numpy warns on the read-only view of `bytes`)
            yield tuple(np.frombuffer(buf, dtype).copy() for buf, (_, dtype) in zip(parts, self.COLUMNS, strict=True))


class SparsePairCounter:
    """Exact counts of the pairs that co-fire, held as a hash table of the pairs seen (see the module docstring).

    CPU only (numba). The table doubles when half full (16-32 bytes per distinct pair) up to `table_limit` bytes
    (default SPARSE_TABLE_LIMIT, read when the counter is made); at the cap its entries are spilled, sorted, to a
    file in `spill_dir` (`spills`) and the table is cleared. The exact counts are the sum over `spills` and
    `pairs()` (a pair may be in several). Without a `spill_dir`, reaching the cap is an error."""

    def __init__(
        self,
        n_components: int,
        capacity: int = 1 << 16,
        spill_dir: Path | None = None,
        table_limit: int | None = None,
    ) -> None:
        self.C = n_components
        self.table_limit = SPARSE_TABLE_LIMIT if table_limit is None else int(table_limit)
        slot_bytes = 2 * np.dtype(np.int64).itemsize
        if self.table_limit < MIN_TABLE_SLOTS * slot_bytes:
            raise ValueError(f"a co-firing table limit of {self.table_limit} bytes is below {MIN_TABLE_SLOTS} slots")
        self.max_slots = 1 << ((self.table_limit // slot_bytes).bit_length() - 1)  # largest power of 2 that fits
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.spills: list[PairRun] = []
        self.peak_nbytes = 0  # the largest table held so far (tests: never above table_limit)
        self._alloc(min(capacity, self.max_slots))
        self.n_used = 0
        # the per-component scratch of _count_pairs: partner counts (zero between batches) and the partners met
        self._partners = np.zeros(n_components, dtype=np.int64)
        self._touched = np.empty(n_components, dtype=np.int64)

    def _alloc(self, capacity: int) -> None:
        self.bits = max(int(capacity - 1).bit_length(), MIN_TABLE_SLOTS.bit_length() - 1)
        self.table = np.full((1 << self.bits, 2), _EMPTY, dtype=np.int64)
        self.peak_nbytes = max(self.peak_nbytes, self.table.nbytes)

    def _grow(self) -> None:
        old = self.table
        del self.table  # the old table is freed once rehashed
        self._alloc(2 * old.shape[0])
        _rehash(old, self.table, np.uint64(64 - self.bits))

    def add(self, firing: Tensor, lists: FiringLists | None = None) -> None:
        """Count one batch's [N, C] bool firing matrix (CPU), from its CSR `lists` when the caller has them."""
        offsets, comps = lists if lists is not None else firing_lists(firing)
        cs = numpy_view(comps.to(torch.int64))
        grouped = _by_component(numpy_view(offsets), cs, self.C)
        a, t, n_touched = 0, 0, 0
        try:
            while True:
                limit = self.table.shape[0] // 2
                a, t, n_touched, self.n_used = _count_pairs(
                    cs, *grouped, self.C, a, t, n_touched, self._partners, self._touched, self.table, self.n_used,
                    limit, np.uint64(64 - self.bits),
                )  # fmt: skip
                if a >= self.C:
                    return
                # the table is half full and the next pair is new: double, or spill where doubling would pass the cap
                if self.table.shape[0] < self.max_slots:
                    self._grow()
                else:
                    self.spill()
        except BaseException:  # the batch is not counted: leave the scratch row zero, as every batch expects it
            self._partners[:] = 0
            raise

    def spill(self) -> None:
        """Write the table's pairs, sorted by (a, b), to a new run in spill_dir, and clear the table (kept its size)."""
        if self.n_used == 0:
            return
        if self.spill_dir is None:
            raise RuntimeError(
                f"the co-firing table reached its cap of {self.table_limit} bytes and has no spill directory"
            )
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        n = _compact(self.table)
        order = np.argsort(self.table[:n, 0])  # keys are distinct: any sort is the same order
        path = self.spill_dir / f"spill-{len(self.spills):05d}.bin"
        with open(path, "wb") as f:
            for name, dtype in PairRun.COLUMNS:
                for s in range(0, n, SPILL_CHUNK):
                    rows = order[s : s + SPILL_CHUNK]
                    if name == "count":
                        values = self.table[rows, 1]
                    else:
                        keys = self.table[rows, 0]
                        values = keys // self.C if name == "a" else keys % self.C
                    f.write(values.astype(dtype, copy=False).tobytes())
        del order
        self.spills.append(PairRun(path, n))
        self.table.fill(_EMPTY)
        self.n_used = 0

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """(a, b, count) of the table, a < b, sorted by (a, b); the runs in `spills` hold the rest of the counts.

        A table that spilled before or is at its cap is spilled once more and released instead (its pairs are then
        all in `spills`, which the shard streams from disk): listing and sorting it in memory would take about the
        cap again, which is what the cap is there to bound. So read `spills` after calling this."""
        if self.spill_dir is not None and self.n_used and (self.spills or self.table.shape[0] >= self.max_slots):
            self.spill()
            self._alloc(MIN_TABLE_SLOTS)  # the cleared full-size table is not needed any more
        used = self.table[:, 0] != _EMPTY
        keys, counts = self.table[used, 0], self.table[used, 1]
        order = np.argsort(keys, kind="stable")
        keys_t, counts_t = torch.from_numpy(keys[order]), torch.from_numpy(counts[order])
        return (keys_t // self.C).to(torch.int32), (keys_t % self.C).to(torch.int32), counts_t

    @property
    def nbytes(self) -> int:
        return self.table.nbytes


class TorchPairCounter:
    """The same exact counts with torch ops on any device: the batch's pair keys summed in a SparseCounter.

    Not capped: its memory is the device's (a GPU task's), which SPARSE_TABLE_LIMIT, a bound on host memory, does
    not govern; a task that sees too many distinct pairs for its device needs more tasks (fewer tokens each)."""

    def __init__(self, n_components: int, device: torch.device | str) -> None:
        self.C = n_components
        self.counter = SparseCounter(device)

    def add(self, firing: Tensor, lists: FiringLists | None = None) -> None:
        offsets, comps = lists if lists is not None else firing_lists(firing)
        self.counter.add(pair_keys_torch(offsets, comps, self.C))

    @property
    def spills(self) -> list[PairRun]:
        """Never any (the same interface as SparsePairCounter)."""
        return []

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        keys = self.counter.keys()
        return (
            (keys // self.C).to("cpu", torch.int32),
            (keys % self.C).to("cpu", torch.int32),
            self.counter.counts().to("cpu"),
        )


def fastest(timings: dict[str, float]) -> str:
    """The method with the smallest time (CofiringCounter's choice on its first batch)."""
    return min(timings, key=timings.__getitem__)


class CofiringCounter:
    """Exact co-firing counts (a, b), a < b, accumulated batch by batch, sparse or dense (see the module docstring).

    `method` may be set before the first batch to force one ("sparse", "int8", "fp32"); `torch_only` counts the
    sparse way with torch ops even on the CPU (the harvest's "torch" kernels). `spill_dir` is where the CPU sparse
    table spills at its cap (SparsePairCounter); the counts are then `spills` plus `pairs()`."""

    def __init__(
        self,
        n_components: int,
        device: torch.device | str,
        torch_only: bool = False,
        spill_dir: Path | None = None,
    ) -> None:
        self.C = n_components
        self.device = torch.device(device)
        self.torch_only = torch_only
        self.spill_dir = spill_dir
        self.table: Tensor | None = None  # the dense int64 [C, C] table, once a dense method is chosen
        self.sparse: SparsePairCounter | TorchPairCounter | None = None
        self.method: str | None = None  # "sparse", "int8" or "fp32", chosen on the first batch

    @property
    def dense_fits(self) -> bool:
        return 8 * self.C * self.C <= DENSE_TABLE_LIMIT

    def add(self, firing: Tensor, firing_rows: Tensor | None = None, lists: FiringLists | None = None) -> None:
        """Count one batch: its [N, C] bool firing matrix (N < 2**24 tokens), and the same as 0/1 float32 and as CSR
        lists when the caller has them (the fp32 product and the sparse count read those instead of deriving them
        again from the bool)."""
        if self.method is None:
            self.method = self._choose(firing, firing_rows, lists)  # may count this batch (sparse) on the way
            return
        if self.method == "sparse":
            self._sparse().add(firing, lists)
            return
        self._dense_add(firing, firing_rows)

    def _sparse(self) -> SparsePairCounter | TorchPairCounter:
        if self.sparse is None:
            on_cpu = self.device.type == "cpu" and not self.torch_only
            self.sparse = (
                SparsePairCounter(self.C, spill_dir=self.spill_dir) if on_cpu else TorchPairCounter(self.C, self.device)
            )
        return self.sparse

    @property
    def spills(self) -> list[PairRun]:
        """The sparse table's spilled runs (none for the dense and torch ways): part of the counts, with `pairs()`."""
        return self.sparse.spills if self.sparse is not None else []

    def _sparse_to_dense(self) -> None:
        """Move the sparse counts (the first batch's: its table and any runs it spilled) into a new dense table."""
        assert self.sparse is not None
        self.table = torch.zeros((self.C, self.C), dtype=torch.int64, device=self.device)
        a, b, n = self.sparse.pairs()  # before reading the runs: it may add one (SparsePairCounter.pairs)
        self.table.index_put_((a.long(), b.long()), n.to(self.device), accumulate=True)
        for run in self.sparse.spills:
            for a, b, n in run.chunks():
                self.table.index_put_(
                    (torch.from_numpy(a).long(), torch.from_numpy(b).long()), torch.from_numpy(n), accumulate=True
                )
            run.path.unlink(missing_ok=True)
        self.sparse = None

    def _dense_add(self, firing: Tensor, firing_rows: Tensor | None) -> None:
        if self.table is None:
            self.table = torch.zeros((self.C, self.C), dtype=torch.int64, device=self.device)
        product, operand = PRODUCTS[self.method], _operand(self.method, firing, firing_rows)
        for r0 in range(0, self.C, MATMUL_BLOCK):
            r1 = min(r0 + MATMUL_BLOCK, self.C)
            self.table[r0:r1, r0:] += product(operand, r0, r1)

    def _choose(self, firing: Tensor, firing_rows: Tensor | None, lists: FiringLists | None) -> str:
        """Pick the method on the first batch and count that batch with it."""
        if self.device.type != "cpu":
            method = "fp32" if self.dense_fits else "sparse"
            self._count_first(method, firing, firing_rows, lists)
            return method
        # the first batch, counted sparse: its first half untimed (it pays for loading the kernel and growing the
        # table, which later batches do not), its second half timed, so the dense products, timed on a second call
        # below, are compared with what a batch costs from then on (at 4K components the untimed load had picked an
        # int8 product 1.5x slower per batch than the sparse count)
        offsets, comps = lists if lists is not None else firing_lists(firing)
        half = firing.shape[0] // 2
        cut = int(offsets[half])
        self._sparse().add(firing[:half], (offsets[: half + 1], comps[:cut]))
        start = time.perf_counter()
        self._sparse().add(firing[half:], (offsets[half:] - cut, comps[cut:]))
        timings = {"sparse": (time.perf_counter() - start) * firing.shape[0] / max(1, firing.shape[0] - half)}
        if self.dense_fits:
            n_blocks = -(-self.C // MATMUL_BLOCK)
            triangle = (n_blocks + 1) / 2  # the first block spans all C columns, the later ones fewer
            for name, product in PRODUCTS.items():
                operand = _operand(name, firing, firing_rows)
                for _ in range(2):  # the second call is timed: the first pays for allocation and kernel set-up
                    begin = time.perf_counter()
                    product(operand, 0, min(MATMUL_BLOCK, self.C))
                    timings[name] = (time.perf_counter() - begin) * triangle
        method = fastest(timings)
        if method != "sparse":  # move the first batch's counts into the dense table
            self._sparse_to_dense()
        return method

    def _count_first(self, method: str, firing: Tensor, firing_rows: Tensor | None, lists: FiringLists | None) -> None:
        if method == "sparse":
            self._sparse().add(firing, lists)
        else:
            self.method = method
            self._dense_add(firing, firing_rows)

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """Non-zero counts above the diagonal as (a, b, count) on the CPU, a < b, sorted by (a, b); where the sparse
        table spilled, the runs in `spills` hold more counts (the same pair may be in both)."""
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
