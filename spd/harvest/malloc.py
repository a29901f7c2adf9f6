"""Keep memory a batch frees for the next batch instead of handing it back to the OS (glibc malloc only).

Why: glibc returns freed memory to the kernel (trimming the heap top, unmapping large blocks) by thresholds
it adjusts as it goes, so a batch's temporaries (the forward's activations and logits, the [N, C] CI and
activations) may be faulted in afresh on the next batch, or not, depending on the allocation history: on the
quickstart harvest, 0 to 330K page faults and up to 0.6 s of system time per 131K-token pass, varying from
pass to pass. With both thresholds fixed, freed blocks under 32 MB come from and go back to the heap and the
heap is kept: once it has its layout (the first one or two batches) every batch reuses the same pages (no
faults); freed memory is kept up to 1 GB.

Blocks above 32 MB (the most glibc lets the mmap threshold be) were still mapped fresh and unmapped again every
time: at 16K components one module's [N, C] tensors are 33.5 MB and the flat ones 134 MB, so a 2048-token bare
forward faulted in 98K pages (384 MB) per batch and took 283 ms instead of 77, the whole harvest batch 789 ms
instead of 369 (1 thread). So mmap is switched off too (M_MMAP_MAX 0): every block comes from the heap and its
pages are reused. The cost is memory: the heap keeps what it has and fragments, so a task's peak RSS is higher
(1.20 -> 1.75 GB for that 16K-component harvest).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
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
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES), (M_MMAP_MAX, 0))
    return all([bool(mallopt(option, value)) for option, value in settings])
