"""The OpenMP thread pool that torch's CPU ops leave behind on a thread.

GNU OpenMP (libgomp, bundled with torch's Linux wheels) keeps a pool of worker threads for every
thread that has run a parallel op. While two pools exist, every parallel region costs tens of
microseconds more (measured on 2 cores: a 37k-element add 3.7 -> 54 us), so `radixrt.Engine`,
whose model runs on its own thread, decoded ~20% slower once the caller had run one parallel
torch op. `release_thread_pool()` ends the calling thread's pool (OpenMP 5's
`omp_pause_resource_all`); its next parallel op starts a new one.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

OMP_PAUSE_HARD = 2  # omp_pause_resource_t


def release_thread_pool() -> bool:
    """End the calling thread's OpenMP worker threads; False where torch's OpenMP is not libgomp."""
    lib = _libgomp()
    return lib is not None and lib.omp_pause_resource_all(OMP_PAUSE_HARD) == 0


@functools.cache
def _libgomp() -> Any:
    """The libgomp this process loaded (torch's), or None."""
    # NOTE: LLVM's libomp answers a hard pause by shutting the whole runtime down, for every
    # thread: only libgomp's per-thread pause is safe while the engine's thread runs ops.
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libgomp" in os.path.basename(line.split()[-1])}
    except (OSError, IndexError):
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
            lib.omp_pause_resource_all.argtypes = [ctypes.c_int]
            return lib
        except (OSError, AttributeError):
            continue
    return None
