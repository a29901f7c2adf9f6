"""numba compilation for the harvest's CPU kernels, cached on disk through numba's public `cache=True`.

numba keeps the compiled kernels beside their source file (`__pycache__/`) or, where that is not writable, in its
user-wide cache directory; $NUMBA_CACHE_DIR (numba's documented environment variable) moves them anywhere. The cache
is keyed by the source file's path and timestamp: every process that imports the same copy of the code loads the
kernels in ~0.2 s instead of compiling them (~5 s). A run's workers import the run's own snapshot of the code
(<run>/code/<hash>/), so each run compiles them once, on its first harvest tasks; later tasks and processes of the
run load them. numba writes cache files atomically (temp file, then rename), so array tasks starting together do
not corrupt it.

Where nothing is writable the kernels are compiled in each process instead of failing. CUDA harvests never call
them (spd.harvest.batch_scan.default_kernels picks torch off the CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from torch import Tensor


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` compiled with numba in nopython mode, releasing the GIL, cached on disk when possible."""
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available": nowhere writable to cache
        return numba.njit(nogil=True)(fn)


def numpy_view(t: Tensor) -> np.ndarray:
    """A C-contiguous numpy array sharing a CPU tensor's memory (a copy only when it is not contiguous)."""
    return t.detach().contiguous().numpy()
