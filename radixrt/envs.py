"""Every `RADIXRT_*` environment variable radixrt reads, in one place, typed.

A leaf module (imports nothing from radixrt), so any package may use it. Read at call time, not
import time: tests and launchers set them for child processes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

API_KEY = "RADIXRT_API_KEY"  # the server's API key (keeps it out of `ps`); never passed to the worker
CACHE = "RADIXRT_CACHE"  # imported models and compiled grammars (default ~/.cache/radixrt)
KERNEL_CACHE = "RADIXRT_KERNEL_CACHE"  # compiled C++ CPU kernels (default $RADIXRT_CACHE/kernels)
KERNELS = "RADIXRT_KERNELS"  # "torch": the PyTorch reference path only (no C++ kernels, no measured choices)


def cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get(CACHE) or Path.home() / ".cache" / "radixrt")


def kernel_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get(KERNEL_CACHE) or cache_root(environ) / "kernels")


def torch_reference_only(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(KERNELS, "").strip().lower() == "torch"


def api_key(environ: Mapping[str, str] = os.environ) -> str | None:
    keys = api_keys(environ)
    return keys[0] if keys else None


def api_keys(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The keys in $RADIXRT_API_KEY: one key, or several one per line."""
    return [k.strip() for k in environ.get(API_KEY, "").splitlines() if k.strip()]


def without_api_key(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """A copy of `environ` for a child that must not see the API key."""
    return {k: v for k, v in environ.items() if k != API_KEY}
