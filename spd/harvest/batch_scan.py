"""The per-entry work of one harvest batch: everything that reads each (token, component) entry of its [N, C]
CI and activations, done in one scan.

A scan returns a `BatchScan` (the firing matrix, the batch's column sums, and the candidates of both example
selections) and adds the batch's firings into the two (component, token) counters. Two implementations give
the same result (the sums up to fp32 summation order):
- `scan_batch_torch`: torch ops, any device; the reference the other is tested against;
- `spd.harvest.batch_scan_numba`: one compiled loop on the CPU that reads each entry once where the torch
  version makes ~15 passes over the batch and lists every firing before keeping a few.
A task's `Kernels` choice covers this scan and the example selections' offers (spd.harvest.reservoir_numba):
`default_kernels` picks numba on the CPU while the token counters are dense tables, torch otherwise (numbers in
docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from spd.harvest.counters import DenseTokenFiringCounter, SparseTokenFiringCounter
from spd.harvest.keys import mix_keys
from spd.harvest.nonzero import flat_nonzero, split_flat_index

Kernels = Literal["numba", "torch"]
TokenFiringCounter = DenseTokenFiringCounter | SparseTokenFiringCounter

# the rows of BatchScan.sums: per-component sums over the batch's tokens (firing_count: how many fire)
SCAN_SUMS = ("firing_count", "ci_sum", "act_sum", "act_abs_sum", "ci_sum_firing", "act_sum_firing")


@dataclass
class Candidates:
    """Firings offered to an example selection, in flat (token, component) order."""

    token: Tensor  # [n] int64: flat token index in the batch (row * S + position)
    comp: Tensor  # [n] int64: flat component index
    key: Tensor  # [n] int64: the firing's sampling key (spd.harvest.keys.mix_keys)
    act: Tensor  # [n] float32: the component activation at the firing


@dataclass
class BatchScan:
    """What the rest of a batch's accumulation needs from its entries."""

    firing: Tensor  # [N, C] bool: CI > threshold
    firing_rows: Tensor | None  # the same as 0/1 float32 where the scan built it (torch), for the fp32 co-firing
    sums: Tensor  # [len(SCAN_SUMS), C] float32
    uniform: Candidates  # firings whose key is below the uniform selection's threshold for their component
    top: Candidates  # firings whose |activation| reaches the top selection's floor for their component
    # the firings as CSR (row offsets [N + 1], components ascending per row), listed by the scan anyway: sparse
    # co-firing reads them instead of another nonzero over `firing`
    firing_lists: tuple[Tensor, Tensor] | None = None


@dataclass(frozen=True)
class BatchEntries:
    """One batch as the scan reads it (N tokens, C components)."""

    ci: Tensor  # [N, C] float32
    act: Tensor  # [N, C] float32
    tokens: Tensor  # [N] int64: the token id at each position
    top_next: Tensor  # [N, m] int64: the target's m most likely next tokens at each position
    position_hash: Tensor  # [N] int64: the sampling keys' per-position part (spd.harvest.keys.position_hashes)


@dataclass(frozen=True)
class ScanRules:
    """What a firing is and which firings each example selection takes, at the start of a batch."""

    threshold: float  # a component fires where its CI exceeds this
    salts: Tensor  # [C] int64: the sampling keys' per-component part (spd.harvest.keys.component_salts)
    uniform_threshold: Tensor  # [C] int64: a firing is a uniform candidate when its key is below this
    top_floor: Tensor  # [C] float32: a firing is a top candidate when its |activation| is at least this


def default_kernels(device: torch.device, counters: tuple[TokenFiringCounter, ...]) -> Kernels:
    """numba on the CPU when the token counters are dense tables (the kernel adds rows into them); else torch."""
    dense = all(isinstance(c, DenseTokenFiringCounter) for c in counters)
    return "numba" if device.type == "cpu" and dense else "torch"


def scan_batch(
    kernels: Kernels,
    batch: BatchEntries,
    rules: ScanRules,
    input_counts: TokenFiringCounter,
    output_counts: TokenFiringCounter,
) -> BatchScan:
    """Scan one batch with the chosen kernels; its firings are added into the two token counters."""
    if kernels == "numba":
        from spd.harvest.batch_scan_numba import scan_batch_numba  # compiled on first use (cached on disk)

        return scan_batch_numba(batch, rules, input_counts, output_counts)
    return scan_batch_torch(batch, rules, input_counts, output_counts)


def scan_batch_torch(
    batch: BatchEntries, rules: ScanRules, input_counts: TokenFiringCounter, output_counts: TokenFiringCounter
) -> BatchScan:
    """`scan_batch` in torch ops (see the module docstring)."""
    ci, act, threshold = batch.ci, batch.act, rules.threshold
    C = ci.shape[1]
    firing = ci > threshold  # bool: what nonzero and the int8 co-firing product read (nonzero of a bool is ~2x faster)
    # the same as 0/1 float32 for the dense sums and the counters (comparing into a float output is ~10x faster than
    # converting the bool); a fp32 sum of 0/1 entries is exact below 2**24 rows
    firing_rows = torch.gt(ci, threshold, out=torch.empty_like(ci))
    # dense column sums: several times cheaper on CPU than a scattered add per firing at typical densities
    sums = torch.stack(
        [
            firing_rows.sum(dim=0),
            ci.sum(dim=0),
            act.sum(dim=0),
            act.abs().sum(dim=0),
            (ci * firing_rows).sum(dim=0),
            (act * firing_rows).sum(dim=0),
        ]
    )
    fired = flat_nonzero(firing)  # flat index token * C + component
    token_index, comp = split_flat_index(fired, C)
    input_counts.add(batch.tokens.unsqueeze(1), firing_rows, token_index, comp)
    output_counts.add(batch.top_next, firing_rows, token_index, comp)
    # index_select: several times faster than advanced indexing on CPU for these 1-D gathers
    keys = mix_keys(batch.position_hash.index_select(0, token_index), rules.salts.index_select(0, comp))
    act_fired = act.reshape(-1).index_select(0, fired)

    def candidates(where: Tensor) -> Candidates:
        pick = flat_nonzero(where)
        return Candidates(*(t.index_select(0, pick) for t in (token_index, comp, keys, act_fired)))

    offsets = torch.zeros(ci.shape[0] + 1, dtype=torch.int64, device=ci.device)
    offsets[1:] = torch.cumsum(torch.bincount(token_index, minlength=ci.shape[0]), 0)  # `fired` is row-major
    return BatchScan(
        firing=firing,
        firing_rows=firing_rows,
        sums=sums,
        uniform=candidates(keys < rules.uniform_threshold.index_select(0, comp)),
        top=candidates(act_fired.abs() >= rules.top_floor.index_select(0, comp)),
        firing_lists=(offsets, comp),
    )
