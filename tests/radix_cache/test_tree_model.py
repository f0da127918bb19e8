"""RadixCache against a naive model, driven like a scheduler drives it.

The model is a dict from every cached prefix (a tuple of token ids) to the slot of its last
token; it is closed under prefixes, so the longest cached prefix is found token by token.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from radixrt.radix_cache.pool import KVPool
from radixrt.radix_cache.tree import RadixCache, TreeNode

ALPHABET = 3  # few token ids, so prefixes collide often
CAPACITY = 24  # small, so eviction and failed allocations happen
MAX_LEN = 8
SEQS = st.lists(st.integers(0, ALPHABET - 1), min_size=1, max_size=MAX_LEN)


@dataclass
class Running:
    ids: list[int]
    cached: torch.Tensor  # slots from match_prefix, owned by the tree
    own: torch.Tensor  # slots the request allocated, owned by the request
    node: TreeNode


def tree_contents(cache: RadixCache) -> dict[tuple[int, ...], int]:
    out: dict[tuple[int, ...], int] = {}
    stack = [((), cache.root)]
    while stack:
        prefix, node = stack.pop()
        for child in node.children.values():
            path = prefix
            for token, slot in zip(child.key, child.value.tolist(), strict=False):
                path = (*path, token)
                out[path] = slot
            stack.append((path, child))
    return out


def path_of(node: TreeNode) -> list[int]:
    keys: list[int] = []
    while node.parent is not None:
        keys = list(node.key) + keys
        node = node.parent
    return keys


class CacheMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.pool = KVPool(CAPACITY + 1, num_layers=1, n_kv_heads=1, head_dim=1)
        self.cache = RadixCache(self.pool)
        self.slot_of: dict[tuple[int, ...], int] = {}
        self.touched: dict[tuple[int, ...], int] = {}  # prefix -> model clock of last touch
        self.locks: Counter[tuple[int, ...]] = Counter()
        self.running: list[Running] = []
        self.clock = 0

    # ---- the naive model ----

    def model_match(self, ids: list[int]) -> int:
        k = 0
        while k < len(ids) and tuple(ids[: k + 1]) in self.slot_of:
            k += 1
        return k

    def touch(self, ids: list[int], k: int) -> None:
        self.clock += 1
        for i in range(1, k + 1):
            self.touched[tuple(ids[:i])] = self.clock

    def lock_model(self, ids: list[int], k: int, delta: int) -> None:
        for i in range(1, k + 1):
            self.locks[tuple(ids[:i])] += delta

    def is_leaf(self, p: tuple[int, ...]) -> bool:
        return all((*p, t) not in self.slot_of for t in range(ALPHABET))

    # ---- scheduler-like steps ----

    def peek_and_check(self, ids: list[int]):
        """The read-only lookup agrees with the model and leaves the whole tree as it was."""
        before = self.cache.to_dict(), tuple(self.cache.size_info())
        peek = self.cache.peek_prefix(ids)
        k = self.model_match(ids)
        assert peek.length == k
        assert peek.unlocked == sum(1 for i in range(1, k + 1) if self.locks[tuple(ids[:i])] == 0)
        path = path_of(peek.node)
        edge_start = len(path) - len(peek.node.key)
        assert path[:k] == ids[:k] and peek.in_node == k - edge_start
        assert edge_start < k <= len(path) or (k == 0 and peek.node is self.cache.root)
        assert (self.cache.to_dict(), tuple(self.cache.size_info())) == before
        return peek

    def match(self, ids: list[int]):
        peek = self.peek_and_check(ids)
        result = self.cache.match_prefix(ids)
        assert result.slots.numel() == peek.length
        k = self.model_match(ids)
        assert result.slots.tolist() == [self.slot_of[tuple(ids[: i + 1])] for i in range(k)]
        assert path_of(result.last_node) == ids[:k]
        self.touch(ids, k)
        return result

    def alloc(self, n: int) -> torch.Tensor | None:
        if self.pool.num_free < n:
            self.evict_and_check(n - self.pool.num_free)
        return self.pool.alloc(n)

    def insert(self, ids: list[int], slots: torch.Tensor, cached: int) -> None:
        expected = self.model_match(ids)
        kept = self.cache.insert(ids, slots)
        assert kept == expected and kept >= cached
        self.pool.free(slots[cached:kept])
        for i in range(kept, len(ids)):
            self.slot_of[tuple(ids[: i + 1])] = int(slots[i])
        self.touch(ids, len(ids))

    def evict_and_check(self, n: int) -> int:
        evictable = sum(1 for p in self.slot_of if self.locks[p] == 0)
        freed = self.cache.evict(n)
        after = tree_contents(self.cache)
        removed = set(self.slot_of) - set(after)
        assert all(self.slot_of[p] == s for p, s in after.items()), "a kept slot changed"
        assert len(removed) == freed >= min(n, evictable)
        assert freed < n + MAX_LEN, "evict went on after it had freed enough"  # one edge at most
        assert not any(self.locks[p] for p in removed), "a locked slot was evicted"
        for p in removed:
            del self.slot_of[p]
        kept_leaves = [p for p in self.slot_of if self.locks[p] == 0 and self.is_leaf(p)]
        if removed and kept_leaves:
            assert max(self.touched[p] for p in removed) <= min(self.touched[p] for p in kept_leaves)
        return freed

    # ---- rules ----

    @rule(ids=SEQS)
    def match_only(self, ids):
        self.match(ids)

    @rule(ids=SEQS)
    def peek_only(self, ids):
        self.peek_and_check(ids)

    @rule(ids=SEQS)
    def insert_fresh(self, ids):
        slots = self.alloc(len(ids))
        if slots is not None:
            self.insert(ids, slots, cached=0)

    @rule(ids=SEQS)
    def start_request(self, ids):
        result = self.match(ids)
        k = result.slots.numel()
        self.cache.lock(result.last_node)
        self.lock_model(ids, k, +1)
        own = self.alloc(len(ids) - k)
        if own is None:
            self.cache.unlock(result.last_node)
            self.lock_model(ids, k, -1)
            return
        self.running.append(Running(ids, result.slots, own, result.last_node))

    @precondition(lambda self: self.running)
    @rule(data=st.data(), abort=st.booleans())
    def finish_request(self, data, abort):
        req = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        k = req.cached.numel()
        if abort:
            self.pool.free(req.own)
        else:
            self.insert(req.ids, torch.cat([req.cached, req.own]), cached=k)
        self.cache.unlock(req.node)
        self.lock_model(req.ids, k, -1)

    @rule(n=st.integers(0, CAPACITY))
    def evict(self, n):
        self.evict_and_check(n)

    @rule()
    def reset(self):
        if any(self.locks.values()):
            with pytest.raises(RuntimeError):
                self.cache.reset()
            return
        self.cache.reset()
        self.slot_of.clear()

    # ---- invariants after every step ----

    @invariant()
    def books_balance(self):
        running_only = sum(r.own.numel() for r in self.running)
        self.cache.check_integrity(running_only_slots=running_only)
        locked = sum(1 for p in self.slot_of if self.locks[p] > 0)
        assert tuple(self.cache.size_info()) == (
            len(self.slot_of) - locked,
            locked,
            len(self.slot_of),
        )

    @invariant()
    def tree_equals_model(self):
        assert tree_contents(self.cache) == self.slot_of

    @invariant()
    def every_slot_is_in_exactly_one_place(self):
        free = self.pool.alloc(self.pool.num_free)
        self.pool.free(free)
        places = [free.tolist(), list(self.slot_of.values())] + [r.own.tolist() for r in self.running]
        flat = [s for place in places for s in place]
        assert sorted(flat) == list(range(1, CAPACITY + 1))

    @invariant()
    def running_handles_still_end_at_their_prefix(self):
        for req in self.running:
            assert path_of(req.node) == req.ids[: req.cached.numel()]
            assert req.node is self.cache.root or req.node.lock_ref > 0


CacheMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestRadixCacheMatchesNaiveModel = CacheMachine.TestCase
