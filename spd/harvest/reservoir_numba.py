"""`ExampleSelection.offer_firings` on the CPU as one compiled pass (numba).

Per component with offered firings: the offered firings in ascending key order, each one that is below the
largest held key written (key, window, provenance) into that slot, found at the top of a max-heap of the
component's slots by key (`ExampleSelection.slot_heaps`, kept across batches): O(g log k) for g offered. No
queue, no fold, no window cut for a firing that does not get in, and the admission threshold (the largest key
held) is current after every batch. The selection ends as `ExampleSelection.offer` + `fold` leave it: the same
examples, each in some slot (slots are unordered; `flat()` orders them by key).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from spd.harvest.jit import compiled, numpy_view
from spd.harvest.reservoir import BatchSource, ExampleSelection
from spd.harvest.windows import PAD_TOKEN


@compiled
def _sift_down(heap, keys, i):
    """Restore the max-heap `heap` (slot ids ordered by keys[slot]) below position i."""
    n = heap.shape[0]
    while True:
        largest, left, right = i, 2 * i + 1, 2 * i + 2
        if left < n and keys[heap[left]] > keys[heap[largest]]:
            largest = left
        if right < n and keys[heap[right]] > keys[heap[largest]]:
            largest = right
        if largest == i:
            return
        heap[i], heap[largest] = heap[largest], heap[i]
        i = largest


@compiled
def _build_heaps(held_key, heaps):
    """heaps[c]: component c's slots as a max-heap by held key (a free slot holds EMPTY_KEY: the largest)."""
    C, k = held_key.shape
    for c in range(C):
        for i in range(k):
            heaps[c, i] = i
        for i in range(k // 2 - 1, -1, -1):
            _sift_down(heaps[c], held_key[c], i)


@compiled
def _offer(heaps, held_key, held_tokens, held_ci, held_act, held_sequence, held_position, held_batch, threshold,
           comp, key, token, tokens, ci, act, starts, seq_len, batch_index, side):  # fmt: skip
    n = comp.shape[0]
    S = tokens.shape[1]
    W = 2 * side + 1
    order = np.argsort(comp, kind="mergesort")  # the offered firings grouped by component
    start = 0
    while start < n:
        c = comp[order[start]]
        end = start + 1
        while end < n and comp[order[end]] == c:
            end += 1
        keys, heap = held_key[c], heaps[c]
        group = order[start:end]
        # smallest offered key first: each one that gets in evicts the largest held, never an earlier newcomer,
        # and the first that does not get in ends the group
        for j in group[np.argsort(key[group], kind="mergesort")]:
            slot = heap[0]
            if key[j] >= keys[slot]:
                break
            row, pos = token[j] // S, token[j] % S
            keys[slot] = key[j]
            for w in range(W):
                p = pos - side + w
                inside = 0 <= p < S
                flat = row * S + p
                held_tokens[c, slot, w] = tokens[row, p] if inside else PAD_TOKEN
                held_ci[c, slot, w] = ci[flat, c] if inside else 0.0
                held_act[c, slot, w] = act[flat, c] if inside else 0.0
            held_sequence[c, slot] = starts[row] // seq_len
            held_position[c, slot] = pos
            held_batch[c, slot] = batch_index
            _sift_down(heap, keys, 0)
        threshold[c] = keys[heap[0]]
        start = end


def offer_firings_numba(
    selection: ExampleSelection, comp: Tensor, key: Tensor, token: Tensor, source: BatchSource
) -> None:
    """See the module docstring; CPU tensors, nothing queued in `selection`."""
    if selection.k == 0 or comp.numel() == 0:
        return
    rows = selection.rows
    if selection.slot_heaps is None:
        selection.slot_heaps = torch.empty((selection.C, selection.k), dtype=torch.int64)
        _build_heaps(rows.key.numpy(), selection.slot_heaps.numpy())
    _offer(
        selection.slot_heaps.numpy(),
        rows.key.numpy(), rows.tokens.numpy(), rows.ci.numpy(), rows.act.numpy(), rows.sequence.numpy(),
        rows.position.numpy(), rows.batch.numpy(), selection.threshold.numpy(),
        numpy_view(comp), numpy_view(key), numpy_view(token),
        numpy_view(source.tokens), numpy_view(source.ci), numpy_view(source.act), numpy_view(source.starts),
        source.seq_len, source.batch_index, source.side,
    )  # fmt: skip
