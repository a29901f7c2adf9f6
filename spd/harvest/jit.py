"""numba compilation for the harvest's CPU kernels, cached on disk by the content of their code.

numba's own disk cache lives next to a kernel's source file (or under a directory named after its path), but every
run's workers import the run's own snapshot of the code (<run>/code/<hash>/), so that cache started empty in every
run and each run's first harvest tasks paid ~5 s of compilation again. The kernels here are cached instead under
<cache root>/spd-pipeline-numba/<digest of the spd/ sources>/ (cache root: $NUMBA_CACHE_DIR, else $XDG_CACHE_HOME,
else ~/.cache): every run, snapshot or checkout with the same code finds them compiled; a change to any spd/
module starts a new directory. numba writes cache files atomically (temp file, then rename), so array
tasks starting together on a shared home directory do not corrupt it.

Where that is not writable numba's usual places are tried, and where nothing is, the kernels are compiled in each
process instead of failing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
from torch import Tensor

from spd.harvest.provenance import spd_sources_sha256

KERNEL_PACKAGE = Path(__file__).resolve().parent


def harvest_code_digest() -> str:
    """The first 16 hex digits of the spd/ sources' sha256 (what a shard records as its code version)."""
    return spd_sources_sha256()[:16]


def kernel_cache_dir() -> Path:
    """Where the compiled kernels of this harvest code are kept (see the module docstring)."""
    root = os.environ.get("NUMBA_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "spd-pipeline-numba" / harvest_code_digest()


try:  # numba's cache locators are an extension point without a stable public API: without it, its usual places
    from numba.core.caching import CacheImpl, _CacheLocator

    class HarvestKernelLocator(_CacheLocator):
        """numba cache locator for functions defined in this package: kernel_cache_dir(), keyed by code digest."""

        def __init__(self, py_func: Callable[..., Any]) -> None:
            self._lineno = py_func.__code__.co_firstlineno

        def get_cache_path(self) -> str:
            return str(kernel_cache_dir())

        def get_source_stamp(self) -> str:
            return harvest_code_digest()

        def get_disambiguator(self) -> str:
            return str(self._lineno)

        @classmethod
        def from_function(cls, py_func: Callable[..., Any], py_file: str) -> HarvestKernelLocator | None:
            if Path(py_file).resolve().parent != KERNEL_PACKAGE:
                return None
            locator = cls(py_func)
            try:
                locator.ensure_cache_path()
            except OSError:  # not writable: numba tries its other locators
                return None
            return locator

    if HarvestKernelLocator not in CacheImpl._locator_classes:
        CacheImpl._locator_classes.insert(0, HarvestKernelLocator)
except (ImportError, AttributeError):
    pass


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` compiled with numba in nopython mode, releasing the GIL, cached on disk when possible."""
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available": nowhere writable to cache
        return numba.njit(nogil=True)(fn)


def numpy_view(t: Tensor) -> np.ndarray:
    """A C-contiguous numpy array sharing a CPU tensor's memory (a copy only when it is not contiguous)."""
    return t.detach().contiguous().numpy()
