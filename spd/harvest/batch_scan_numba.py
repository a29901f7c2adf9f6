"""`scan_batch` on the CPU as one compiled loop (numba): each (token, component) entry is read once.

Per token row: the sums over every entry (CI, activation, |activation|) and the firing flags in one vectorised
loop; the row's firings listed 8 flags at a time, skipping the words with none (at 16K components and ~128 firings
per token most words hold no firing); then work per firing, not per component: the firing-only sums (count, CI and
activation), the input-token row and the m output-token rows of the counters' tables, and the selections' limits.
At 16K components, ~128 firings per token and m = 3, a 2048-token batch took 145 ms with dense row adds, 72 with
per-firing adds, and 39 with the firing-only sums per firing and the word-skipping listing. Results equal
`scan_batch_torch`'s (the same candidates in the same order, the same counts, the same keys); the fp32 sums differ
only in summation order.

Compiled on first use and cached on disk by numba (spd.harvest.jit), so a run pays the few seconds of compilation
on its first harvest tasks, not in every task.
"""

from __future__ import annotations

import numpy as np
import torch

from spd.harvest.batch_scan import SCAN_SUMS, BatchEntries, BatchScan, Candidates, ScanRules, TokenFiringCounter
from spd.harvest.counters import DenseTokenFiringCounter
from spd.harvest.jit import compiled, numpy_view
from spd.harvest.keys import KEY_BITS, MIX_MULTIPLIER

_MIX = np.uint64(MIX_MULTIPLIER)
_SHIFT_HALF = np.uint64(32)
_SHIFT_KEY = np.uint64(64 - KEY_BITS)


@compiled
def _grown(values: np.ndarray, needed: int) -> np.ndarray:
    """`values` copied into an array with room for at least `needed` entries on its last axis (doubling: amortised
    O(1))."""
    out = np.empty(values.shape[:-1] + (max(2 * values.shape[-1], needed),), values.dtype)  # noqa: RUF005 (numba)
    out[..., : values.shape[-1]] = values
    return out


@compiled
def _put(ids, acts, i, token, comp, key, act):
    """Candidate i of one selection: ids [3, cap] (token, component, key), acts [cap]."""
    ids[0, i], ids[1, i], ids[2, i], acts[i] = token, comp, key, act


@compiled
def _scan(ci, act, tokens, top_next, position_hash, salts, threshold, uniform_threshold, top_floor, sums,
          input_table, output_table, firing):  # fmt: skip
    N, C = ci.shape
    m = top_next.shape[1]
    fired = np.empty(C, np.int64)
    # every row's firings as CSR lists (what sparse co-firing counts pairs from)
    offsets, listed, n_listed = np.zeros(N + 1, np.int64), np.empty(1024, np.int64), 0
    # candidates of the uniform (0) and top (1) selections: (token, component, key) and activation
    ids, acts, n_uni, n_top = np.empty((2, 3, 1024), np.int64), np.empty((2, 1024), np.float32), 0, 0
    count, ci_sum, act_sum, abs_sum, ci_firing, act_firing = sums[0], sums[1], sums[2], sums[3], sums[4], sums[5]
    flags = firing.reshape(N * C)
    words = flags.view(np.uint64) if C % 8 == 0 else flags[:0].view(np.uint64)
    per_row = C // 8 if C % 8 == 0 else 0  # 8 firing flags per word: a row is listed a word at a time
    for n in range(N):
        ci_row, act_row, firing_row = ci[n], act[n], firing[n]
        for c in range(C):  # the sums over every entry, no branches: vectorised
            x, a = ci_row[c], act_row[c]
            firing_row[c] = x > threshold
            ci_sum[c] += x
            act_sum[c] += a
            abs_sum[c] += abs(a)
        # the row's firing components: skip the words with no firing (most of them: a few firings per thousand
        # entries), list the rest without a branch per entry
        n_fired = 0
        for w in range(per_row):
            if words[n * per_row + w] != 0:
                for c in range(8 * w, 8 * w + 8):
                    fired[n_fired] = c
                    n_fired += firing_row[c]
        for c in range(8 * per_row, C):
            fired[n_fired] = c
            n_fired += firing_row[c]
        for i in range(n_fired):  # the sums over firings: work per firing (adding the zeros of the rest changed none)
            c = fired[i]
            count[c] += np.float32(1.0)
            ci_firing[c] += ci_row[c]
            act_firing[c] += act_row[c]
        if n_listed + n_fired > listed.shape[0]:
            listed = _grown(listed, n_listed + n_fired)
        listed[n_listed : n_listed + n_fired] = fired[:n_fired]
        n_listed += n_fired
        offsets[n + 1] = n_listed
        # the row's firings into its input-token row and its m output-token rows: work per firing, not per entry
        table_row = input_table[tokens[n]]
        for i in range(n_fired):
            table_row[fired[i]] += np.float32(1.0)
        for j in range(m):
            table_row = output_table[top_next[n, j]]
            for i in range(n_fired):
                table_row[fired[i]] += np.float32(1.0)
        if max(n_uni, n_top) + n_fired > acts.shape[1]:
            ids, acts = _grown(ids, max(n_uni, n_top) + n_fired), _grown(acts, max(n_uni, n_top) + n_fired)
        h = position_hash[n]
        for i in range(n_fired):
            c = fired[i]
            x = h + salts[c]  # spd.harvest.keys.mix_keys on unsigned 64-bit integers
            x = (x ^ (x >> _SHIFT_HALF)) * _MIX
            key = np.int64(x >> _SHIFT_KEY)
            a = act_row[c]
            if key < uniform_threshold[c]:
                _put(ids[0], acts[0], n_uni, n, c, key, a)
                n_uni += 1
            if abs(a) >= top_floor[c]:
                _put(ids[1], acts[1], n_top, n, c, key, a)
                n_top += 1
    return ids[0, :, :n_uni], acts[0, :n_uni], ids[1, :, :n_top], acts[1, :n_top], offsets, listed[:n_listed]


def scan_batch_numba(
    batch: BatchEntries, rules: ScanRules, input_counts: TokenFiringCounter, output_counts: TokenFiringCounter
) -> BatchScan:
    """`spd.harvest.batch_scan.scan_batch` on CPU tensors, for dense token counters (see the module docstring)."""
    if not (isinstance(input_counts, DenseTokenFiringCounter) and isinstance(output_counts, DenseTokenFiringCounter)):
        raise TypeError("the numba scan adds into dense token counters; use the torch scan for sparse ones")
    N, C = batch.ci.shape
    sums = torch.zeros((len(SCAN_SUMS), C), dtype=torch.float32)  # the kernel writes them in SCAN_SUMS order
    firing = torch.empty((N, C), dtype=torch.bool)
    parts = _scan(
        numpy_view(batch.ci), numpy_view(batch.act), numpy_view(batch.tokens), numpy_view(batch.top_next),
        numpy_view(batch.position_hash).view(np.uint64), numpy_view(rules.salts).view(np.uint64),
        np.float32(rules.threshold), numpy_view(rules.uniform_threshold), numpy_view(rules.top_floor), sums.numpy(),
        input_counts.table_for(N).numpy(), output_counts.table_for(N).numpy(), firing.numpy(),
    )  # fmt: skip
    uniform, top = (Candidates(*torch.from_numpy(ids), torch.from_numpy(acts)) for ids, acts in (parts[:2], parts[2:4]))
    lists = (torch.from_numpy(parts[4]), torch.from_numpy(parts[5]))
    return BatchScan(firing=firing, firing_rows=None, sums=sums, uniform=uniform, top=top, firing_lists=lists)
