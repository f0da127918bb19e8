"""glibc malloc settings for a process that runs the model on the CPU: freed large blocks stay
mapped for the next step.

Every forward allocates and frees the same large tensors (a batch-64 decode step's logits: 6 MB
in bf16, then 12 MB in float32). With glibc's defaults such a block goes back to the kernel when
freed, and the next step faults its pages in again, zeroed: on the embedded model whole runs of
batch-64 decode steps spent 16 ms of their ~65 ms in one `.float()`. `keep_freed_blocks()` keeps
them:

- blocks of up to 32 MB (glibc's ceiling for `M_MMAP_THRESHOLD`) come from a heap, not from a
  mapping of their own that `free` unmaps;
- the main heap is trimmed only when 256 MB are free at its top;
- heaps grow and are kept with 64 MB to spare (`M_TOP_PAD`): a thread other than the main one
  (`radixrt.Engine`'s) allocates from heaps of at most 64 MB, and one that empties is unmapped
  unless the pad holds it (with the thresholds alone, 2 of 6 measured 36-step runs still faulted
  on almost every step).
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameters (malloc.h)
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 256 << 20, M_TOP_PAD: 64 << 20}


@functools.cache
def keep_freed_blocks() -> bool:
    """Apply the settings, once per process; False where the C library has no `mallopt` (not
    glibc) or refuses one."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all([mallopt(param, value) == 1 for param, value in SETTINGS.items()])
