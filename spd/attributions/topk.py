"""Streaming top-k: for every owner node, the k most positive and k most negative partners seen so far.

The merge sees one dense block at a time (and the output logits one row chunk at a time), so it never holds
a full sources x targets matrix; this keeps, per owner, fixed-size buffers that absorb each block.
"""

from __future__ import annotations

import torch
from torch import Tensor


class RunningTopK:
    """k largest and k smallest values per owner with their partner ids (-1 = empty slot)."""

    def __init__(self, n_owners: int, k: int) -> None:
        self.k = k
        self.hi_vals = torch.full((n_owners, k), -torch.inf, dtype=torch.float64)
        self.lo_vals = torch.full((n_owners, k), torch.inf, dtype=torch.float64)
        self.hi_ids = torch.full((n_owners, k), -1, dtype=torch.int64)
        self.lo_ids = torch.full((n_owners, k), -1, dtype=torch.int64)

    def _fold(
        self, vals: Tensor, ids: Tensor, owners: Tensor, new_vals: Tensor, new_ids: Tensor, largest: bool
    ) -> None:
        all_vals = torch.cat([vals[owners], new_vals], dim=1)
        all_ids = torch.cat([ids[owners], new_ids], dim=1)
        best_vals, pos = all_vals.topk(self.k, dim=1, largest=largest)
        vals[owners] = best_vals
        ids[owners] = all_ids.gather(1, pos)

    def update(self, owners: Tensor, values: Tensor, partner_ids: Tensor) -> None:
        """Absorb values [len(owners), m] whose column j belongs to partner partner_ids[j]."""
        m = values.shape[1]
        if m == 0 or len(owners) == 0:
            return
        values = values.to(torch.float64)
        kk = min(self.k, m)
        for largest, vals, ids in ((True, self.hi_vals, self.hi_ids), (False, self.lo_vals, self.lo_ids)):
            top_vals, pos = values.topk(kk, dim=1, largest=largest)
            self._fold(vals, ids, owners, top_vals, partner_ids[pos], largest)

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """(owner, partner id, value) of every kept value that is strictly positive (hi) or negative (lo)."""
        owners = torch.arange(self.hi_vals.shape[0]).unsqueeze(1).expand_as(self.hi_vals)
        keep_hi = (self.hi_ids >= 0) & (self.hi_vals > 0)
        keep_lo = (self.lo_ids >= 0) & (self.lo_vals < 0)
        return (
            torch.cat([owners[keep_hi], owners[keep_lo]]),
            torch.cat([self.hi_ids[keep_hi], self.lo_ids[keep_lo]]),
            torch.cat([self.hi_vals[keep_hi], self.lo_vals[keep_lo]]),
        )
