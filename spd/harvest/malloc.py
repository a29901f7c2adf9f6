"""Keep memory a batch frees for the next batch instead of handing it back to the OS (glibc malloc only).

Why: glibc returns freed memory to the kernel (trimming the heap top, unmapping large blocks) by thresholds
it adjusts as it goes, so a batch's temporaries (the forward's activations and logits, the [N, C] CI and
activations) may be faulted in afresh on the next batch, or not, depending on the allocation history: on the
quickstart harvest, 0 to 330K page faults and up to 0.6 s of system time per 131K-token pass, varying from
pass to pass. With both thresholds fixed, freed blocks under 32 MB come from and go back to the heap and the
heap is kept: once it has its layout (the first one or two batches) every batch reuses the same pages (no
faults). The peak memory is unchanged; freed memory is kept up to 1 GB.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # the largest the dynamic threshold would reach on 64-bit
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (see the module docstring). False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
