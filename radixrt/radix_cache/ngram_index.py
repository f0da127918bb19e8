"""What followed the same tokens in the radix tree's cached sequences: draft tokens for speculation.

The index maps every n-gram (n = 1 .. max_n) of the token runs inserted into the tree to where its
last token was most recently inserted: the node that held it then and its depth (its position from
the root). A lookup reads the next k tokens from there on, changing nothing in the tree: no split,
no LRU touch, no hit count.

    root ── [5 6 7 8] ──┬── [9 1]      index[(7, 8)] = (node [5 6 7 8], depth 3)
                        └── [4 4]      continuation of (7, 8): 9 1 (the branch used last)

Why the location stays readable: a node's edge is only ever cut from above (`_split` keeps the
lower part in the same object), so the token at `depth` is in the stored node or one of its
ancestors, found by walking up while the node starts below `depth`. Past the edge's end, the read
goes on into the most recently used child. An evicted node is detached (`parent` None): its entries
are stale and dropped when looked up. The index holds at most `capacity` n-grams, the oldest
registered first out, so its memory is bounded whatever the tree does. n-grams are keyed with the
salt of the tree they were inserted under, so a lookup never drafts another tenant's tokens.

Ranking: the most recent occurrence wins (one location per n-gram). Agent loops repeat what they
did last (the same tool-call scaffolding, the current document), recency follows a conversation as it
drifts, and one location per n-gram keeps inserts O(tokens) and lookups O(max_n + k); counting
continuations by frequency (SuffixDecoding) would need per-continuation counters for every n-gram.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from radixrt.radix_cache.tree import TreeNode

DEFAULT_MAX_N = 4


class NgramIndex:
    """n-gram -> (node, depth) of its most recently inserted last token; see the module docstring."""

    def __init__(self, max_n: int = DEFAULT_MAX_N, capacity: int = 1 << 20):
        if max_n < 1 or capacity < 1:
            raise ValueError(f"max_n and capacity must be >= 1, got {max_n} and {capacity}")
        self.max_n = max_n
        self.capacity = capacity
        # NOTE: oldest registered first. An OrderedDict, not a dict: taking a plain dict's first
        # item after deleting others scans past their dead slots, which made every insert at
        # capacity cost O(capacity) (100 tokens: 31 ms instead of 0.2)
        self._where: OrderedDict[tuple[str, tuple[int, ...]], tuple[TreeNode, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._where)

    def add(self, leaf: TreeNode, ids: list[int], start: int, salt: str = "") -> None:
        """Register a new leaf holding `ids[start:]` (depths start .. len(ids) - 1) under `salt`.

        Only n-grams that something follows are registered (so a sequence's end never hides an
        earlier occurrence that has a continuation); the ones ending at `start - 1` are registered
        again, as their latest continuation is now this leaf.
        """
        where, max_n = self._where, self.max_n
        for end in range(max(start - 1, 0), len(ids) - 1):
            # NOTE: the parent's node for the n-grams ending at start - 1; the read walks down into `leaf`
            node = leaf if end >= start else leaf.parent
            for n in range(1, min(max_n, end + 1) + 1):
                key = (salt, tuple(ids[end - n + 1 : end + 1]))
                where[key] = (node, end)
                where.move_to_end(key)
        while len(where) > self.capacity:
            where.popitem(last=False)

    def continuation(self, tail: list[int], k: int, min_n: int = 1, salt: str = "") -> tuple[list[int], int]:
        """Up to `k` tokens that followed the longest suffix of `tail` (at least `min_n` tokens) found
        in `salt`'s sequences, and that suffix's length; ([], 0) when none. Changes nothing in the tree."""
        for n in range(min(self.max_n, len(tail)), min_n - 1, -1):
            key = (salt, tuple(tail[len(tail) - n :]))
            found = self._where.get(key)
            if found is None:
                continue
            node, depth = found
            if node.parent is None and node.key:  # evicted (or flushed): stale
                del self._where[key]
                continue
            tokens = read_after(node, depth, k)
            if tokens:
                return tokens, n
        return [], 0

    def clear(self) -> None:
        self._where.clear()


def read_after(node: TreeNode, depth: int, k: int) -> list[int]:
    """Up to `k` tokens after the token at `depth`, which `node` or an ancestor holds; past an
    edge's end the read follows the most recently used child. Reads only."""
    while depth < node.depth:
        node = node.parent
    out: list[int] = []
    pos = depth + 1
    while len(out) < k:
        offset = pos - node.depth
        if offset < len(node.key):
            run = node.key[offset : offset + k - len(out)]
            out += run
            pos += len(run)
        elif node.children:
            node = max(node.children.values(), key=lambda c: c.last_access)
        else:
            break
    return out
