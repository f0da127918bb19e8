"""Pinned prompts: a finished request's prompt stays in the radix tree until its pin expires.

A pin is one lock on the tree node that ends the pinned prefix, so eviction, retraction and flushes
leave its path alone exactly as they leave a running request's prefix alone. Pins on the same node
share one lock (the later expiry wins). Pinned tokens (the union of the pinned paths) are capped at
`max_fraction` of the KV slots, so pins cannot starve admission: a pin that would pass the cap is
trimmed to the longest prefix of the prompt that fits, and refused when not one new token fits
(`PinReport` says which). Expiry uses a monotonic clock and is checked by the scheduler each pass.
Pins end early only when nothing runs and a waiting request still cannot be admitted: the cap keeps
that rare (it takes a request needing more than the unpinned share of the slots), and it keeps
such a request from waiting out the pins.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from radixrt.radix_cache.tree import RadixCache, TreeNode


class PinReport(NamedTuple):
    """What a pin request got: `pinned_tokens` leading prompt tokens until `expires_in_s` from now."""

    pinned_tokens: int
    prompt_tokens: int
    expires_in_s: float
    refused: str | None = None  # why nothing was pinned

    @property
    def trimmed(self) -> bool:
        return self.refused is None and self.pinned_tokens < self.prompt_tokens

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pinned_tokens": self.pinned_tokens, "trimmed": self.trimmed}
        if self.refused is not None:
            out["refused"] = self.refused
        else:
            out["expires_in_s"] = round(self.expires_in_s, 3)
        return out


class Pins:
    def __init__(self, tree: RadixCache, max_fraction: float, clock: Callable[[], float] = time.monotonic):
        self.tree = tree
        self.cap = math.floor(max_fraction * tree.pool.capacity)
        self.clock = clock
        self._until: dict[TreeNode, float] = {}  # pinned node -> monotonic expiry
        self.capped = 0  # pins refused or trimmed, over the server's life
        self.dropped = 0  # pins ended early to let a request run

    def __len__(self) -> int:
        return len(self._until)

    def pin(self, ids: list[int], salt: str, seconds: float) -> PinReport:
        """Pin the cached prefix of `ids` under `salt` for `seconds` (the caller checked > 0)."""
        pinned = self._pinned_nodes()
        held = self.tree.peek_prefix(ids, salt).length
        covered = _covered(self.tree, ids, salt, pinned)
        room = self.cap - sum(len(n.key) for n in pinned)
        k = min(held, covered + max(room, 0))
        if k == 0:
            self.capped += 1
            why = f"the pinned-token cap ({self.cap} = --max-pinned-fraction of the KV slots) is reached"
            return PinReport(0, len(ids), 0.0, why if held else "the prompt is not in the cache")
        self.capped += k < len(ids)
        node = self.tree.node_at(ids[:k], salt)
        assert node is not None, "the tree held these tokens a moment ago"
        until = self.clock() + seconds
        if node in self._until:
            self._until[node] = max(self._until[node], until)
        else:
            self.tree.lock(node)
            self._until[node] = until
        return PinReport(k, len(ids), self._until[node] - self.clock())

    def expire(self) -> int:
        """Unpin what expired; returns how many pins ended."""
        if not self._until:
            return 0
        now = self.clock()
        done = [node for node, until in self._until.items() if until <= now]
        for node in done:
            self.tree.unlock(node)
            del self._until[node]
        return len(done)

    def drop_all(self) -> int:
        """Unpin everything now (a waiting request cannot run otherwise); returns how many pins ended."""
        for node in self._until:
            self.tree.unlock(node)
        n = len(self._until)
        self.dropped += n
        self._until.clear()
        return n

    def tokens(self) -> int:
        """Tokens under pins (each counted once however many pins cover it)."""
        return sum(len(n.key) for n in self._pinned_nodes())

    def _pinned_nodes(self) -> set[TreeNode]:
        nodes: set[TreeNode] = set()
        for node in self._until:
            while node.key and node not in nodes:
                nodes.add(node)
                node = node.parent
        return nodes


def _covered(tree: RadixCache, ids: list[int], salt: str, pinned: set[TreeNode]) -> int:
    """Leading tokens of `ids` already under pins (pinned paths are closed upwards: a prefix)."""
    node, pos = tree.root_of(salt), 0
    while pos < len(ids) and (child := node.children.get(ids[pos])) is not None and child in pinned:
        m = 0
        while m < len(child.key) and pos + m < len(ids) and child.key[m] == ids[pos + m]:
            m += 1
        node, pos = child, pos + m
        if m < len(child.key):
            break
    return pos
