"""KV bookkeeping for running requests: the only code that changes KV slots or the radix tree.

Every slot is in exactly one place: the pool's free list, the radix tree, or a running
request's private tail (`Req.private_slots`). `check()` asserts that the books balance.

Lookups for waiting requests (`peek`, `prefix_len`, `prefix_path`) change nothing; the one
mutating match of a request happens in `admit`, so the tree's LRU times and hit counts say
how often a prefix was used, not how often it was looked at. Every tree call passes the request's
salt: requests of different salts (tenants) never share a cached token.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import torch

from radixrt.radix_cache import tree_debug
from radixrt.radix_cache.block_index import BlockIndex
from radixrt.radix_cache.ngram_index import NgramIndex
from radixrt.radix_cache.pool import KVPool, ReqToToken
from radixrt.radix_cache.snapshot import LoadResult, SaveJob, load_snapshot
from radixrt.radix_cache.snapshot_file import SnapshotReader, SnapshotWriter
from radixrt.radix_cache.tree import PrefixPeek, RadixCache
from radixrt.runtime.scheduler.pins import Pins
from radixrt.runtime.scheduler.req import Req

MAX_SALT_LABELS = 32  # labels in stats at most: salts past the 31st are summed as "other"


class SlotStats(NamedTuple):
    total: int
    free: int
    cached: int  # held by the tree, used by no running request (evictable)
    in_use: int  # referenced by running requests (locked tree nodes + private tails)


class CacheManager:
    """`ngrams`: index the tree's sequences for draft lookups (speculative decoding); `eviction`: the
    tree's eviction policy; `max_pinned_fraction`: the share of KV slots pins may hold."""

    def __init__(
        self,
        pool: KVPool,
        req_to_token: ReqToToken,
        disable_radix_cache: bool = False,
        ngrams: NgramIndex | None = None,
        eviction: str = "lru",
        max_pinned_fraction: float = 0.5,
    ):
        self.pool = pool
        self.table = req_to_token
        # NOTE: the cache ablation's one switch lives here, not in the tree: the manager decides
        # what is borrowed and inserted, and must know the mode anyway (cache_prefix, in-batch
        # sharing), so with it off the tree stays empty and keeps a single behaviour.
        self.disabled = disable_radix_cache
        self.tree = RadixCache(pool, ngrams, eviction)
        self.pins = Pins(self.tree, max_pinned_fraction)
        self.hit_tokens = 0  # prompt tokens reused from the cache, over all requests
        self.prompt_tokens = 0  # prompt tokens admitted, over all requests
        self.by_salt: dict[str, list[int]] = {}  # salt label -> [hit tokens, prompt tokens]
        self.tree_changes = 0  # inserts, evictions by flush, flushes: whether a saved snapshot is stale

    # ---- read-only lookups (ordering, fit checks) ---------------------------------------------

    def peek(self, req: Req) -> PrefixPeek:
        """The cached prefix a waiting request would borrow now; changes nothing."""
        if self.disabled:
            return PrefixPeek(0, self.tree.root, 0, 0)
        return self.tree.peek_prefix(req.fill_ids(0, req.max_reusable_prefix), req.salt)

    def prefix_len(self, req: Req) -> int:
        return self.peek(req).length

    def prefix_path(self, req: Req) -> tuple[int, ...]:
        """Ids of the tree nodes req's cached prefix runs through, the root first (dfs-weight)."""
        node, ids = self.peek(req).node, []
        while node is not None:
            ids.append(node.id)
            node = node.parent
        return tuple(reversed(ids))

    def continuation(self, tail: list[int], k: int, min_n: int, salt: str = "") -> tuple[list[int], int]:
        """Up to `k` tokens that followed the longest suffix of `tail` in `salt`'s cached sequences,
        and that suffix's length (draft tokens); changes nothing."""
        if self.tree.ngrams is None:
            return [], 0
        return self.tree.ngrams.continuation(tail, k, min_n, salt)

    def available_after_borrow(self, prefix: PrefixPeek) -> int:
        """Slots obtainable once `prefix` is borrowed (locking it takes its unlocked slots)."""
        return self.available() - prefix.unlocked

    # ---- admission -----------------------------------------------------------------------

    def admit(self, req: Req, n: int) -> None:
        """Give a waiting request a row, its longest cached prefix (locked) and slots for its
        next `n` tokens. The caller checked a free row and `available_after_borrow`."""
        self._borrow(req)
        slots = self.alloc(n)
        # NOTE: cannot fail: every evictable slot can be evicted (an unlocked node has no locked
        # descendant), and the fit check counted free + evictable after this borrow's lock.
        assert slots is not None, f"{req.rid}: {n} slots passed the fit check but are not there"
        self.append(req, slots)
        if req.cached_tokens < 0:  # first admission; a retracted request keeps its count
            req.cached_tokens = min(req.prefix_len, req.prompt_len)
            self.hit_tokens += req.cached_tokens
            self.prompt_tokens += req.prompt_len
            counts = self.by_salt.setdefault(self._salt_label(req.salt), [0, 0])
            counts[0] += req.cached_tokens
            counts[1] += req.prompt_len

    def _salt_label(self, salt: str) -> str:
        """A short hash of a salt for stats (never the salt itself); bounded in number."""
        label = hashlib.sha256(salt.encode()).hexdigest()[:8] if salt else "none"
        return label if label in self.by_salt or len(self.by_salt) < MAX_SALT_LABELS - 1 else "other"

    def _borrow(self, req: Req) -> None:
        row = self.table.alloc()
        assert row is not None, "admission checked for a free row"
        req.row = row
        n, node = 0, None
        if not self.disabled:
            match = self.tree.match_prefix(req.fill_ids(0, req.max_reusable_prefix), req.salt)
            n, node = len(match.slots), match.last_node
            self.tree.lock(node)
            self.table.write(row, 0, match.slots)
        req.prefix_len = req.computed = n
        req.last_node = node

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

    def abandon(self, req: Req, n: int) -> None:
        """Free the slots allocated for req's next `n` tokens: the step that was to compute them failed."""
        self.pool.free(self.seq_slots(req, req.computed + n)[req.computed :])

    def seq_slots(self, req: Req, length: int) -> torch.Tensor:
        return self.table.read(req.row, length)

    def can_uncompute(self, req: Req, n: int) -> bool:
        """Whether req's last `n` computed tokens are its own (not borrowed from the tree)."""
        return n <= req.private_slots

    def uncompute(self, req: Req, n: int) -> None:
        """Free the KV of req's last `n` computed tokens; they become pending again (jump-forward
        rewrites them)."""
        assert self.can_uncompute(req, n), f"{req.rid}: {n} tokens reach into the borrowed prefix"
        self.pool.free(self.seq_slots(req, req.computed)[req.computed - n :])
        req.computed -= n

    # ---- release -----------------------------------------------------------------------

    def cache_prefix(self, req: Req) -> None:
        """Insert what req computed into the tree and borrow it back, so requests admitted
        later share it while req keeps running (called when a prompt finishes prefilling)."""
        if self.disabled or req.computed <= req.prefix_len:
            return
        ids = req.fill_ids(0, req.computed)
        self._insert(req, ids)
        # NOTE: a peek, not a match: taking back one's own tokens is not a hit.
        peek = self.tree.peek_prefix(ids, req.salt)
        assert peek.length == len(ids) and peek.in_node == len(peek.node.key), "insert ends a node there"
        self.tree.lock(peek.node)
        self.tree.unlock(req.last_node)
        self.table.write(req.row, 0, self.tree.path_slots(peek.node))
        req.last_node, req.prefix_len = peek.node, len(ids)

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
        already = self.tree.insert(ids, slots, req.salt)
        self.tree_changes += 1
        # NOTE: the tree keeps its own slots for the first `already` tokens; ours for
        # [prefix_len, already) are duplicates of the same tokens and go back to the pool.
        if already > req.prefix_len:
            self.pool.free(slots[req.prefix_len : already])

    def flush(self) -> dict[str, Any]:
        """Free every cached slot no running request or pin holds. `{"flushed": True}` when the tree
        is empty after it; else also the tokens freed and those kept (pinned, locked by requests)."""
        self.pins.expire()
        size = self.tree.size_info()
        if not size.protected:
            self.tree.reset()
            self.tree_changes += 1
            return {"flushed": True}
        freed = self.tree.evict(size.evictable)
        self.tree_changes += 1
        pinned = self.pins.tokens()
        return {
            "flushed": False,
            "freed_tokens": freed,
            "pinned_tokens": pinned,
            "locked_tokens": size.protected - pinned,
        }

    def restore(self, reader: SnapshotReader) -> LoadResult:
        """Fill the empty tree from a saved snapshot (cache_persistence.py), at start."""
        return load_snapshot(reader, self.tree)

    def save_job(self, writer: SnapshotWriter, piece_tokens: int) -> SaveJob:
        """A snapshot of the tree as it is now, written piece by piece (cache_persistence.py)."""
        return SaveJob(self.tree, writer, piece_tokens)

    def follow_blocks(self, blocks: BlockIndex) -> None:
        """Keep `blocks` in step with what the tree holds (a cluster replica publishes it)."""
        self.tree.blocks = blocks

    @property
    def eviction_name(self) -> str:
        return self.tree.eviction.name

    def view(self, tokenizer: Any, max_nodes: int, salt: str) -> dict[str, Any]:
        """A bounded picture of `salt`'s tree as plain data (radix_cache/tree_debug.py)."""
        return tree_debug.snapshot(self.tree, tokenizer, max_nodes, salt)

    # ---- pins --------------------------------------------------------------------------

    def pin(self, req: Req) -> None:
        """Pin a finished request's prompt for `req.pin_s` seconds (after `release`); the outcome
        goes to `req.pin_report`."""
        if self.disabled:
            req.pin_report = {"pinned_tokens": 0, "trimmed": False, "refused": "the radix cache is disabled"}
            return
        self.pins.expire()
        req.pin_report = self.pins.pin(req.input_ids, req.salt, req.pin_s).meta()

    def expire_pins(self) -> None:
        self.pins.expire()

    def salt_stats(self) -> dict[str, dict[str, int]]:
        return {label: {"cache_hit_tokens": h, "prompt_tokens": p} for label, (h, p) in self.by_salt.items()}

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
