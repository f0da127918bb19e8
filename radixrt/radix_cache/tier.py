"""Cache tiers: levels below the KV pool that keep copies of KV rows, addressed by slot ids.

    KVPool (device memory) ── save_rows(pool, slots) -> handle ──►  tier (host memory, a file, ...)
                           ◄── load_rows(handle, pool, slots) ────

A tier copies the rows of pool slots out (`KVPool.read_rows`) and back into other slots of a pool
of the same layout (`KVPool.write_rows`); which token run a handle holds is the caller's business
(the radix tree's nodes, or a snapshot's index). The tier today is the snapshot file
(`snapshot_file.py`, `--cache-dir`). A host-memory level under a GPU pool (SGLang HiCache's L2) is
another implementation of the same two calls: a `KVPool` on the host whose slots are the handles,
with tree nodes keeping a host handle beside, or instead of, their device slots.
"""

from __future__ import annotations

from typing import Protocol

import torch

from radixrt.radix_cache.pool import KVPool


class TierError(Exception):
    """The rows under a handle are missing or damaged; nothing was written to the pool."""


class KVTier(Protocol):
    def save_rows(self, pool: KVPool, slots: torch.Tensor) -> int:
        """Copy the K and V rows of `slots` (every layer) out of `pool`; returns their handle."""
        ...

    def load_rows(self, handle: int, pool: KVPool, slots: torch.Tensor) -> None:
        """Copy the first `len(slots)` rows saved under `handle` into `slots` of `pool`; raises
        TierError, with the pool untouched, if they cannot be read back intact."""
        ...
