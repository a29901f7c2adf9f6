"""numba compilation for the harvest's CPU kernels, cached on disk where a cache directory is writable.

numba's on-disk cache (__pycache__ next to the source, else the user's cache directory) lets every harvest task
after the first on a machine skip the seconds of compilation. Where neither is writable (a read-only install
and home), numba refuses to cache at all; the kernels are then compiled in each process instead of failing.
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
