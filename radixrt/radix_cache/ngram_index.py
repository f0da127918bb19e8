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
Inserts are only queued; the first lookup after them indexes them, in order (a server whose requests
never draft, such as 1-token answers, spent 5% of its time indexing every insert). The tree's index
keeps n-grams of 2 or more tokens: the drafter never looks up fewer there.

Ranking: the most recent occurrence wins (one location per n-gram). Agent loops repeat what they
did last (the same tool-call scaffolding, the current document), recency follows a conversation as it
drifts, and one location per n-gram keeps inserts O(tokens) and lookups O(max_n + k); counting
continuations by frequency (SuffixDecoding) would need per-continuation counters for every n-gram.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from radixrt.radix_cache.tree import TreeNode

DEFAULT_MAX_N = 4


class NgramIndex:
    """n-gram -> (node, depth) of its most recently inserted last token; see the module docstring."""

    def __init__(self, max_n: int = DEFAULT_MAX_N, capacity: int = 1 << 20, min_n: int = 1):
        if not 1 <= min_n <= max_n or capacity < 1:
            raise ValueError(f"need 1 <= min_n <= max_n and capacity >= 1, got {min_n}, {max_n}, {capacity}")
        self.max_n, self.min_n = max_n, min_n  # n-grams shorter than min_n are never looked up
        self.capacity = capacity
        # NOTE: inserts are indexed when a lookup comes (in order, so the most recent still wins): a
        # server where nothing drafts (1-token answers, prompts only) pays nothing for the index
        self._pending: deque[tuple[TreeNode, tuple[int, ...], int, int, str]] = deque()
        self._pending_tokens = 0
        # NOTE: oldest registered first. An OrderedDict, not a dict: taking a plain dict's first
        # item after deleting others scans past their dead slots, which made every insert at
        # capacity cost O(capacity) (100 tokens: 31 ms instead of 0.2)
        self._where: OrderedDict[tuple[str, tuple[int, ...]], tuple[TreeNode, int]] = OrderedDict()

    def __len__(self) -> int:
        self._catch_up()
        return len(self._where)

    def add(self, leaf: TreeNode, ids: list[int], start: int, salt: str = "") -> None:
        """Register a new leaf holding `ids[start:]` (depths start .. len(ids) - 1) under `salt`.

        Only n-grams that something follows are registered (so a sequence's end never hides an
        earlier occurrence that has a continuation); the ones ending at `start - 1` are registered
        again, as their latest continuation is now this leaf.
        """
        base = max(start - self.max_n, 0)  # the earliest token an n-gram registered here starts at
        self._pending.append((leaf, tuple(ids[base:]), base, start, salt))
        self._pending_tokens += len(ids) - start
        while self._pending:  # an insert whose every n-gram newer ones would push out: dropped now
            _, old, old_base, old_start, _ = self._pending[0]
            old_tokens = len(old) + old_base - old_start
            if self._pending_tokens - old_tokens < self.capacity:
                break
            self._pending.popleft()
            self._pending_tokens -= old_tokens

    def _catch_up(self) -> None:
        where, max_n, min_n = self._where, self.max_n, self.min_n
        while self._pending:
            leaf, ids, base, start, salt = self._pending.popleft()
            self._pending_tokens -= len(ids) + base - start
            if leaf.parent is None:  # evicted (or flushed) before anyone looked
                continue
            for end in range(max(start - 1, 0), len(ids) + base - 1):
                # NOTE: the parent's node for the n-grams ending at start - 1; the read walks down into `leaf`
                node = leaf if end >= start else leaf.parent
                at = end - base
                for n in range(min_n, min(max_n, end + 1) + 1):
                    key = (salt, ids[at - n + 1 : at + 1])
                    where[key] = (node, end)
                    where.move_to_end(key)
        while len(where) > self.capacity:
            where.popitem(last=False)

    def continuation(self, tail: list[int], k: int, min_n: int = 1, salt: str = "") -> tuple[list[int], int]:
        """Up to `k` tokens that followed the longest suffix of `tail` (at least `min_n` tokens) found
        in `salt`'s sequences, and that suffix's length; ([], 0) when none. Changes nothing in the tree."""
        self._catch_up()
        for n in range(min(self.max_n, len(tail)), max(min_n, self.min_n) - 1, -1):
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
        self._pending.clear()
        self._pending_tokens = 0


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
