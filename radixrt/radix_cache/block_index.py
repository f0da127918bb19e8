"""What the radix tree holds, as chained hashes of fixed-size token blocks: the summary a replica
publishes so that a router can tell, without the tree, how long a prefix of a request it holds.

Block k of a sequence is its tokens [k*B, (k+1)*B); its hash covers the block and, through the
previous block's hash, everything before it:

    h(0) = H(tokens[0:B]),  h(k) = H(h(k-1) || tokens[kB:(k+1)B])

so one hash names one whole prefix, and a router that finds h(0) .. h(k-1) of a request in a
replica's set knows the replica holds its first k*B tokens (up to B-1 more are not counted).

The index follows the tree: a new leaf adds the blocks that end on its edge, an evicted leaf takes
away the blocks that ended on its edge (a radix tree holds each prefix on one path, so no other
node holds them), a reset clears it. Splitting an edge changes no path, hence no block. Its size is
bounded by the tree's: at most kv_slots / B hashes. Thread-safe: the scheduler's thread changes it,
the replica's publisher reads `snapshot` from another thread.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections.abc import Sequence

DEFAULT_BLOCK_TOKENS = 16


def block_hashes(ids: Sequence[int], block_tokens: int = DEFAULT_BLOCK_TOKENS, salt: str = "") -> list[int]:
    """h(0) .. h(n-1) of the n = len(ids) // block_tokens whole blocks of `ids` (64-bit ints). A
    cache salt seeds the chain: the same tokens under another salt are another prefix."""
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
    n = len(ids) // block_tokens
    raw = array("q", ids[: n * block_tokens]).tobytes()
    step = 8 * block_tokens
    out, prev = [], (hashlib.blake2b(salt.encode(), digest_size=8, person=b"radixrt salt").digest() if salt else b"")
    for k in range(n):
        prev = hashlib.blake2b(prev + raw[k * step : (k + 1) * step], digest_size=8).digest()
        out.append(int.from_bytes(prev, "little"))
    return out


def held_blocks(query: Sequence[int], held: set[int] | frozenset[int]) -> int:
    """How many leading block hashes of `query` are in `held`."""
    for k, h in enumerate(query):
        if h not in held:
            return k
    return len(query)


class BlockIndex:
    """block hash -> its block number, for every whole block the tree holds (module docstring)."""

    def __init__(self, block_tokens: int = DEFAULT_BLOCK_TOKENS):
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        self.block_tokens = block_tokens
        self.version = 0  # bumped on every change: a publisher skips unchanged snapshots
        self._blocks: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blocks)

    def on_insert(self, ids: Sequence[int], start: int, salt: str = "") -> None:
        """A new leaf holds `ids[start:]` below a path holding `ids[:start]`, under `salt`'s root."""
        first = start // self.block_tokens  # the first block that ends past `start`
        hashes = block_hashes(ids, self.block_tokens, salt)
        if first < len(hashes):
            with self._lock:
                for k in range(first, len(hashes)):
                    self._blocks[hashes[k]] = k
                self.version += 1

    def on_evict(self, path_ids: Sequence[int], depth: int, salt: str = "") -> None:
        """The leaf holding `path_ids[depth:]` (its whole path under `salt`'s root is `path_ids`)
        leaves the tree."""
        first = depth // self.block_tokens
        hashes = block_hashes(path_ids, self.block_tokens, salt)
        if first < len(hashes):
            with self._lock:
                for h in hashes[first:]:
                    self._blocks.pop(h, None)
                self.version += 1

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self.version += 1

    def snapshot(self, max_blocks: int) -> tuple[int, list[int]]:
        """(version, at most `max_blocks` hashes), the shallowest blocks first: a deep block is of
        no use to a router without the blocks above it."""
        with self._lock:
            items = list(self._blocks.items())
            version = self.version
        if len(items) > max_blocks:
            items.sort(key=lambda item: item[1])
            items = items[:max_blocks]
        return version, [h for h, _ in items]
