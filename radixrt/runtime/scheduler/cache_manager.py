"""KV bookkeeping for running requests: prefix borrowing, slot allocation, release.

Every slot is in exactly one place: the pool's free list, the radix tree, or a running
request's private tail (`Req.private_slots`). `check()` asserts that the books balance.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from radixrt.radix_cache.pool import KVPool, ReqToToken
from radixrt.radix_cache.tree import RadixCache
from radixrt.runtime.scheduler.req import Req


class SlotStats(NamedTuple):
    total: int
    free: int
    cached: int  # held by the tree, used by no running request (evictable)
    in_use: int  # referenced by running requests (locked tree nodes + private tails)


class CacheManager:
    def __init__(self, pool: KVPool, req_to_token: ReqToToken, disable_radix_cache: bool = False):
        self.pool = pool
        self.table = req_to_token
        self.disabled = disable_radix_cache
        self.tree = RadixCache(pool)
        self.hit_tokens = 0  # prompt tokens reused from the cache, over all requests
        self.prompt_tokens = 0  # prompt tokens admitted, over all requests

    # ---- prefix --------------------------------------------------------------------------

    def match_len(self, req: Req) -> int:
        """Cached prefix length a waiting request would get (for the scheduling policy)."""
        if self.disabled:
            return 0
        return min(len(self.tree.match_prefix(req.fill_ids(0, req.max_reusable_prefix)).slots), req.max_reusable_prefix)

    def borrow_prefix(self, req: Req) -> None:
        """Give an admitted request a row and lock its longest cached prefix."""
        row = self.table.alloc()
        assert row is not None, "admission checked for a free row"
        req.row = row
        n, node = 0, None
        if not self.disabled:
            match = self.tree.match_prefix(req.fill_ids(0, req.max_reusable_prefix))
            n, node = len(match.slots), match.last_node
            self.tree.lock(node)
            self.table.write(row, 0, match.slots)
        req.prefix_len = req.computed = n
        req.last_node = node
        if req.cached_tokens < 0:
            req.cached_tokens = min(n, req.prompt_len)
            self.hit_tokens += req.cached_tokens
            self.prompt_tokens += req.prompt_len

    def undo_borrow(self, req: Req) -> None:
        """Reverse borrow_prefix for a request that turned out not to fit."""
        if req.last_node is not None:
            self.tree.unlock(req.last_node)
        self.table.free(req.row)
        req.row, req.last_node, req.prefix_len, req.computed = None, None, 0, 0

    # ---- slots -------------------------------------------------------------------------

    def available(self) -> int:
        """Slots obtainable now: free plus evictable."""
        return self.pool.num_free + self.tree.size_info().evictable

    def alloc(self, n: int) -> torch.Tensor | None:
        slots = self.pool.alloc(n)
        if slots is None:
            self.tree.evict(n - self.pool.num_free)
            slots = self.pool.alloc(n)
        return slots

    def append(self, req: Req, slots: torch.Tensor) -> None:
        """Record slots for the next `len(slots)` tokens of req (computed advances after the forward)."""
        self.table.write(req.row, req.computed, slots)

    def seq_slots(self, req: Req, length: int) -> torch.Tensor:
        return self.table.read(req.row, length)

    # ---- release -----------------------------------------------------------------------

    def cache_prefix(self, req: Req) -> None:
        """Insert what req computed into the tree and borrow it back, so requests admitted
        later share it while req keeps running (called when a prompt finishes prefilling)."""
        if self.disabled or req.computed <= req.prefix_len:
            return
        ids = req.fill_ids(0, req.computed)
        self._insert(req, ids)
        match = self.tree.match_prefix(ids)
        assert len(match.slots) == len(ids), "just inserted"
        self.tree.lock(match.last_node)
        self.tree.unlock(req.last_node)
        self.table.write(req.row, 0, match.slots)
        req.last_node, req.prefix_len = match.last_node, len(ids)

    def release(self, req: Req) -> None:
        """Finished, aborted or retracted: computed KV goes to the tree (or the pool), row freed."""
        if req.row is None:
            return
        if self.disabled:
            self.pool.free(self.seq_slots(req, req.computed)[req.prefix_len :])
        elif req.computed > req.prefix_len:
            self._insert(req, req.fill_ids(0, req.computed))
        if req.last_node is not None:
            self.tree.unlock(req.last_node)
        self.table.free(req.row)
        req.row, req.last_node, req.prefix_len, req.computed = None, None, 0, 0

    def _insert(self, req: Req, ids: list[int]) -> None:
        slots = self.seq_slots(req, len(ids)).clone()
        already = self.tree.insert(ids, slots)
        # NOTE: the tree keeps its own slots for the first `already` tokens; ours for
        # [prefix_len, already) are duplicates of the same tokens and go back to the pool.
        if already > req.prefix_len:
            self.pool.free(slots[req.prefix_len : already])

    def flush(self) -> bool:
        if self.tree.size_info().protected:
            return False
        self.tree.reset()
        return True

    # ---- books -------------------------------------------------------------------------

    def stats(self, running: list[Req]) -> SlotStats:
        size = self.tree.size_info()
        private = sum(r.private_slots for r in running if r.row is not None)
        return SlotStats(self.pool.capacity, self.pool.num_free, size.evictable, size.protected + private)

    def check(self, running: list[Req]) -> None:
        private = sum(r.private_slots for r in running if r.row is not None)
        self.tree.check_integrity(private)
        s = self.stats(running)
        assert s.free + s.cached + s.in_use == s.total, s
