"""Positions of the true entries of a bool tensor, fast on the CPU too.

A harvest batch has ~10^5 firings among ~10^6 (token, component) entries, and listing them is one of its
largest costs on a CPU: torch.nonzero there is 5-10x slower than numpy's flatnonzero on the same memory
(2048 x 256 entries, 27% true, one thread: 1.6-2.0 ms against 0.24 ms). On other devices torch's own kernel is used.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def flat_nonzero(mask: Tensor) -> Tensor:
    """int64 indices of the true entries of `mask` in its flattened (row-major) order, ascending."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.reshape(-1).nonzero().squeeze(1)


def split_flat_index(flat: Tensor, n_cols: int) -> tuple[Tensor, Tensor]:
    """(row, column) of flat indices into a [*, n_cols] table (numpy's divmod on the CPU: ~2x torch's there)."""
    if flat.device.type == "cpu":
        row, col = np.divmod(flat.numpy(), n_cols)
        return torch.from_numpy(row), torch.from_numpy(col)
    row = torch.div(flat, n_cols, rounding_mode="floor")
    return row, flat - row * n_cols
