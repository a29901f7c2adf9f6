"""The m largest entries of each row of a logits matrix, exactly, fast on CPU.

torch.topk on CPU costs ~1.5-3 ns per element however small m is (it partially sorts every row). With m much
smaller than the vocabulary, two passes are cheaper: the maximum of each chunk of CHUNK entries (a vectorised
reduction, ~0.1 ns per element), then the m chunks with the largest maxima, then top-m among those chunks'
entries (and the last, shorter chunk when CHUNK does not divide the vocabulary). Exact: every one of a row's m
largest entries lies in one of its m chunks with the largest maxima (were it elsewhere, m chunk maxima would
exceed it). Ties may be broken differently from torch.topk; the returned entries' values are the same.
Measured on one CPU thread, m = 3 (torch.topk against this): [2048 x 1024] 3.2 -> 2.2 ms, [256 x 50257] 16.3 -> 2.7
ms, [512 x 128256] 75 -> 12 ms. Chunks of 64 were fastest or within 7% of the fastest from 1K to 128K tokens
(the maxima pass slows down below 64 entries a chunk, the candidates' top-m above).
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK = 64  # entries per chunk


def top_m_indices(logits: Tensor, m: int) -> Tensor:
    """[..., V] -> [..., m] int64 indices of the m largest entries of each row (in no particular order)."""
    V = logits.shape[-1]
    S = CHUNK
    G = V // S  # whole chunks; the remaining V - G*S entries form the tail
    if logits.device.type != "cpu" or 2 * m > G:
        return logits.topk(m, dim=-1, sorted=False).indices  # accelerators' topk is fast; tiny rows gain nothing
    lead = logits.shape[:-1]
    rows = logits.reshape(-1, V)
    N = rows.shape[0]
    chunks = rows[:, : G * S].reshape(N, G, S)  # a view (no copy) even when a tail is left out
    best_chunks = chunks.amax(dim=-1).topk(m, dim=-1, sorted=False).indices  # [N, m]
    # the chosen chunks' entries: windows of S entries at any flat offset (an overlapping view, no copy), picked at
    # each chunk's start (reshaping the chunk view instead would copy it whenever S does not divide V)
    starts = (torch.arange(N, device=rows.device).unsqueeze(1) * V + best_chunks * S).reshape(-1)
    candidates = rows.reshape(-1).unfold(0, S, 1).index_select(0, starts).view(N, m * S)
    if G * S < V:
        candidates = torch.cat([candidates, rows[:, G * S :]], dim=1)
    pick = candidates.topk(m, dim=-1, sorted=False).indices  # [N, m] positions among the candidates
    in_chunk = pick < m * S
    chunk_pos = torch.div(pick, S, rounding_mode="floor").clamp(max=m - 1)
    from_chunks = best_chunks.gather(1, chunk_pos) * S + pick % S
    from_tail = G * S + (pick - m * S)
    return torch.where(in_chunk, from_chunks, from_tail).reshape(*lead, m)
