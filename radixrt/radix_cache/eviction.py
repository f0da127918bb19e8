"""Which unlocked leaf of the radix tree goes first when slots run out.

- `lru`: least recently used first (the default).
- `slru`: segmented LRU. A node hit at least once since it was inserted (a reused prefix: a tenant's
  system prompt, an agent's scaffold) is in the protected segment; never-hit nodes (one-off
  suffixes, outputs nobody asked for again) are probationary and go first, least recent first. So
  that a once-hot segment cannot hold the cache forever, protected leaves go first (LRU) while the
  protected segment holds more than `PROTECTED_SHARE` of the tree's tokens.

The counters are the tree's own: `TreeNode.hit_count` (raised by every `match_prefix` on the path,
which is the scheduler's one matching lookup per admitted request) and `RadixCache.hit_tokens`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from radixrt.radix_cache.tree import TreeNode

EVICTION_POLICIES = ("lru", "slru")
# NOTE: measured with `python -m radixrt.bench.eviction` (Zipf 0.8 and 1.1, 8k and 16k slots, steady and
# drifting popularity): 0.8 lost 1.5-2.5 points of hit rate to 0.95, 0.9 was within a point of 0.95
# everywhere, and no cap at all lost most when popularity drifts. 0.9 leaves new prefixes twice
# 0.95's room.
PROTECTED_SHARE = 0.9


class EvictionQueue(Protocol):
    def __bool__(self) -> bool: ...
    def push(self, node: TreeNode) -> None: ...
    def pop(self, hit_tokens: int, tree_tokens: int) -> TreeNode: ...


class EvictionPolicy(Protocol):
    name: str

    def queue(self, leaves: Iterable[TreeNode]) -> EvictionQueue: ...


def _entry(node: TreeNode) -> tuple[int, int, TreeNode]:
    return (node.last_access, node.id, node)


class _LruQueue:
    def __init__(self, leaves: Iterable[TreeNode]):
        self.heap = [_entry(n) for n in leaves]
        heapq.heapify(self.heap)

    def __bool__(self) -> bool:
        return bool(self.heap)

    def push(self, node: TreeNode) -> None:
        heapq.heappush(self.heap, _entry(node))

    def pop(self, hit_tokens: int, tree_tokens: int) -> TreeNode:
        return heapq.heappop(self.heap)[2]


class _SlruQueue:
    def __init__(self, leaves: Iterable[TreeNode]):
        self.cold: list[tuple[int, int, TreeNode]] = []
        self.hot: list[tuple[int, int, TreeNode]] = []
        for n in leaves:
            (self.hot if n.hit_count else self.cold).append(_entry(n))
        heapq.heapify(self.cold)
        heapq.heapify(self.hot)

    def __bool__(self) -> bool:
        return bool(self.cold or self.hot)

    def push(self, node: TreeNode) -> None:
        heapq.heappush(self.hot if node.hit_count else self.cold, _entry(node))

    def pop(self, hit_tokens: int, tree_tokens: int) -> TreeNode:
        over = hit_tokens > PROTECTED_SHARE * tree_tokens
        heap = self.hot if self.hot and (over or not self.cold) else self.cold
        return heapq.heappop(heap)[2]


class Lru:
    name = "lru"

    def queue(self, leaves: Iterable[TreeNode]) -> EvictionQueue:
        return _LruQueue(leaves)


class Slru:
    name = "slru"

    def queue(self, leaves: Iterable[TreeNode]) -> EvictionQueue:
        return _SlruQueue(leaves)


def eviction_policy(name: str) -> EvictionPolicy:
    if name == "lru":
        return Lru()
    if name == "slru":
        return Slru()
    raise ValueError(f"eviction policy must be one of {EVICTION_POLICIES}, got {name!r}")
