"""Radix tree over token ids whose nodes own KV slots of a `KVPool`.

Each edge holds a run of token ids (`key`) and the pool slots of their KV entries (`value`).
Nodes are keyed in their parent by the first token of their run, so a lookup walks edge by edge.

    root ── [1 2 3] ──┬── [4 5]      "1 2 3 4 5" and "1 2 3 9" share the slots of "1 2 3"
                      └── [9]

Salts: the tree keeps one root per salt string (a tenant's cache namespace; "" for unsalted
requests). Every lookup and insert takes the salt and walks only under its root, so requests with
different salts never share a cached token. A salted root with no children left is dropped.

Slot ownership (the books every test checks):
    pool.num_free + slots held by the tree + slots held only by running requests == capacity
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch

from radixrt.radix_cache.block_index import BlockIndex
from radixrt.radix_cache.eviction import EvictionPolicy, eviction_policy
from radixrt.radix_cache.ngram_index import NgramIndex
from radixrt.radix_cache.pool import KVPool
from radixrt.radix_cache.tree_debug import check_node, check_slots, draw, node_dict

# Edges are compared a chunk at a time before falling back to single tokens.
_CHUNK = 32


class TreeNode:
    """One edge of the tree: a token run, its slots, and bookkeeping for locking and LRU."""

    __slots__ = ("children", "depth", "hit_count", "id", "key", "last_access", "lock_ref", "parent", "value")

    def __init__(self, node_id: int, key: list[int], value: torch.Tensor, parent: TreeNode | None):
        self.id = node_id
        self.key = key
        self.value = value  # [len(key)] int64 slot ids
        self.parent = parent
        self.depth = parent.depth + len(parent.key) if parent is not None else 0  # tokens above this edge
        self.children: dict[int, TreeNode] = {}
        self.lock_ref = 0
        self.last_access = 0  # the cache's logical clock, not wall time
        self.hit_count = 0

    def __repr__(self) -> str:
        return f"TreeNode(id={self.id}, len={len(self.key)}, lock_ref={self.lock_ref})"


class RootNode(TreeNode):
    """The root of one salt's tree: an empty edge. Locking or unlocking it changes nothing."""

    __slots__ = ("salt",)

    def __init__(self, node_id: int, salt: str):
        super().__init__(node_id, [], torch.empty(0, dtype=torch.int64), None)
        self.salt = salt


class MatchResult(NamedTuple):
    slots: torch.Tensor  # [matched] int64, a copy the caller may keep
    last_node: TreeNode  # ends exactly at the match; the root when nothing matched


class PrefixPeek(NamedTuple):
    """What `peek_prefix` finds: the cached prefix of a query, with nothing in the tree changed."""

    length: int  # leading tokens of the query the tree holds
    node: TreeNode  # the node whose edge holds the last of them; the root when none
    in_node: int  # of them, tokens on `node`'s own edge (< len(node.key): the match ends mid-edge)
    unlocked: int  # of them, tokens in unlocked nodes: what locking the match takes from the evictable


class CacheSize(NamedTuple):
    evictable: int  # slots held by unlocked nodes
    protected: int  # slots held by locked nodes
    total: int


def _as_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)


def _match_len(key: list[int], ids: list[int], start: int) -> int:
    """Length of the common prefix of `key` and `ids[start:]`, by slice compares."""
    n = min(len(key), len(ids) - start)
    if key[:n] == ids[start : start + n]:
        return n
    i = 0
    while key[i : i + _CHUNK] == ids[start + i : start + i + _CHUNK]:
        i += _CHUNK
    while key[i] == ids[start + i]:  # a mismatch lies within this chunk
        i += 1
    return i


class RadixCache:
    """Prefix cache of KV slots: match, insert, lock running prefixes, evict leaves (eviction.py).

    `ngrams`, when given, indexes every inserted token run for draft lookups (ngram_index.py).
    `eviction`: "lru" (default) or "slru" (segmented: leaves never hit since inserted go first).
    `blocks`, when set, follows what the tree holds as block hashes (block_index.py: a replica's
    summary for the cluster router).
    """

    def __init__(self, pool: KVPool, ngrams: NgramIndex | None = None, eviction: str = "lru"):
        self.pool = pool
        self.ngrams = ngrams
        self.eviction: EvictionPolicy = eviction_policy(eviction)
        self.blocks: BlockIndex | None = None
        self._clock = 0
        self._next_id = 0
        self.root = self._new_root("")  # the unsalted tree's root; it is never dropped
        self._roots: dict[str, RootNode] = {"": self.root}
        # NOTE: what a lookup under a salt with no root yet returns: empty, detached, never filled
        self._vacant = self._new_root("")
        self._leaves: set[TreeNode] = set()
        self._evictable = 0
        self._protected = 0
        self.hit_tokens = 0  # tokens in nodes hit at least once since inserted (slru's protected segment)

    def _new_root(self, salt: str) -> RootNode:
        node = RootNode(self._next_id, salt)
        self._next_id += 1
        return node

    def roots(self) -> list[tuple[str, RootNode]]:
        """(salt, root) of every salt the tree holds tokens for (and the unsalted root). Read only."""
        return list(self._roots.items())

    def root_of(self, salt: str) -> RootNode:
        """The root of `salt`'s tree, or an empty detached root when it holds nothing; changes nothing."""
        return self._roots.get(salt, self._vacant)

    def _new_node(self, key: list[int], value: torch.Tensor, parent: TreeNode | None) -> TreeNode:
        node = TreeNode(self._next_id, key, value, parent)
        self._next_id += 1
        return node

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    # ---- lookup and insertion -------------------------------------------------------------

    def peek_prefix(self, ids: Sequence[int] | torch.Tensor, salt: str = "") -> PrefixPeek:
        """Longest prefix of `ids` cached under `salt`, changing nothing: no split, no LRU touch,
        no hit count. For questions asked often of requests that may never run (ordering, fit checks).
        """
        ids = _as_list(ids)
        node, pos, in_node, unlocked = self.root_of(salt), 0, 0, 0
        while pos < len(ids) and (child := node.children.get(ids[pos])) is not None:
            in_node = _match_len(child.key, ids, pos)
            unlocked += in_node if child.lock_ref == 0 else 0
            node, pos = child, pos + in_node
            if in_node < len(child.key):
                break  # the match ends mid-edge; the node's children continue its whole edge
        return PrefixPeek(pos, node, in_node, unlocked)

    def match_prefix(self, ids: Sequence[int] | torch.Tensor, salt: str = "") -> MatchResult:
        """Longest prefix of `ids` cached under `salt`: its slots and the node that ends exactly there.

        A match that ends inside an edge splits that edge, so `last_node` can be locked to pin
        exactly the matched tokens. Every node on the path is touched for LRU and counts a hit.
        The caller that needs logits for the last prompt token should match `ids[:-1]`.
        """
        peek = self.peek_prefix(ids, salt)
        node = peek.node
        if peek.in_node < len(node.key):
            node = self._split(node, peek.in_node)
        now = self._tick()
        for n in self._path(node):
            n.last_access = now
            if n.hit_count == 0:
                self.hit_tokens += len(n.key)
            n.hit_count += 1
        return MatchResult(self.path_slots(node), node)

    def node_at(self, ids: Sequence[int] | torch.Tensor, salt: str = "") -> TreeNode | None:
        """The node ending exactly after `ids` under `salt` (an edge is split there), or None when
        the tree does not hold all of `ids`. No LRU touch, no hit count: for pins."""
        ids = _as_list(ids)
        peek = self.peek_prefix(ids, salt)
        if peek.length < len(ids):
            return None
        return self._split(peek.node, peek.in_node) if peek.in_node < len(peek.node.key) else peek.node

    def path_slots(self, node: TreeNode) -> torch.Tensor:
        """[tokens from the root to the end of `node`'s edge] int64: their slots, a copy."""
        values = [n.value for n in reversed(self._path(node))]
        return torch.cat(values) if values else torch.empty(0, dtype=torch.int64)

    def _path(self, node: TreeNode) -> list[TreeNode]:
        """`node` and its ancestors below the root, deepest first."""
        path = []
        while node.key:  # only roots have empty edges
            path.append(node)
            node = node.parent
        return path

    def insert(self, ids: Sequence[int] | torch.Tensor, slots: torch.Tensor, salt: str = "") -> int:
        """Cache `ids` under `salt` with their KV `slots`; returns how many leading tokens were already
        cached there.

        Ownership contract, with `r` the returned length and `cached` the length the caller got
        from `match_prefix` (and kept locked):
          - the tree takes `slots[r:]`; the caller must not free them;
          - the tree keeps its own slots for `ids[:r]`, so `slots[cached:r]` are duplicates
            the caller allocated itself and must now free: `pool.free(slots[cached:r])`;
          - `slots[:cached]` came from the tree and stay owned by it.
        Afterwards a node ends exactly at `len(ids)`, so `peek_prefix(ids, salt)` finds it unsplit.
        """
        ids = _as_list(ids)
        if len(ids) != slots.numel():
            raise ValueError(f"insert got {len(ids)} ids but {slots.numel()} slots")
        slots = slots.to(device="cpu", dtype=torch.int64).reshape(-1)
        now = self._tick()
        if not ids:
            return 0
        node: TreeNode | None = self._roots.get(salt)
        if node is None:
            node = self._roots[salt] = self._new_root(salt)
        pos = 0
        while pos < len(ids):
            child = node.children.get(ids[pos])
            if child is None:
                # NOTE: clone, since the caller's tensor is often a view of a reused table row.
                leaf = self._add_leaf(node, ids[pos:], slots[pos:].clone(), now)
                if self.ngrams is not None:
                    self.ngrams.add(leaf, ids, pos, salt)
                if self.blocks is not None:
                    self.blocks.on_insert(ids, pos, salt)
                break
            m = _match_len(child.key, ids, pos)
            if m < len(child.key):
                child = self._split(child, m)
            child.last_access = now
            node, pos = child, pos + m
        return pos

    def _split(self, node: TreeNode, m: int) -> TreeNode:
        """Cut `node`'s edge after `m` tokens; returns the new upper node.

        `node` keeps the lower part, so handles that callers hold (and locked) still end
        where they did. The upper node copies its lock count, so the counters do not change.
        """
        parent = node.parent
        upper = self._new_node(node.key[:m], node.value[:m], parent)
        upper.lock_ref = node.lock_ref
        upper.last_access = node.last_access
        upper.hit_count = node.hit_count
        parent.children[node.key[0]] = upper
        node.key, node.value = node.key[m:], node.value[m:]
        node.parent = upper
        node.depth += m
        upper.children[node.key[0]] = node
        return upper

    def _add_leaf(self, parent: TreeNode, key: list[int], value: torch.Tensor, now: int) -> TreeNode:
        leaf = self._new_node(key, value, parent)
        leaf.last_access = now
        parent.children[key[0]] = leaf
        self._leaves.discard(parent)
        self._leaves.add(leaf)
        self._evictable += len(key)
        return leaf

    # ---- locking --------------------------------------------------------------------------

    def lock(self, node: TreeNode) -> None:
        """Protect `node` and its ancestors from eviction (a running request or a pin uses them)."""
        self._check_attached(node)
        while node.key:
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: TreeNode) -> None:
        """Undo one `lock(node)`; raises RuntimeError if `node` is not locked."""
        self._check_attached(node)
        if node.key and node.lock_ref <= 0:
            raise RuntimeError(f"unlock of an unlocked node {node!r}")
        # NOTE: an ancestor's lock_ref is never below its descendant's, so the walk cannot
        # go negative once the first node checked out.
        while node.key:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._protected -= len(node.key)
                self._evictable += len(node.key)
            node = node.parent

    def _check_attached(self, node: TreeNode) -> None:
        if node.key and node.parent is None:
            raise RuntimeError(f"{node!r} is no longer in the tree (evicted or reset)")

    # ---- eviction -------------------------------------------------------------------------

    def evict(self, n_slots: int) -> int:
        """Free at least `n_slots` slots (fewer only if the tree runs out) to the pool.

        Takes unlocked leaves in the eviction policy's order; a parent that becomes an unlocked
        leaf joins the candidates. Returns the number of slots freed.
        """
        queue = self.eviction.queue(n for n in self._leaves if n.lock_ref == 0)
        freed, victims = 0, []
        while freed < n_slots and queue:
            leaf = queue.pop(self.hit_tokens, self._evictable + self._protected)
            victims.append(leaf.value)
            freed += len(leaf.key)
            if self.blocks is not None:
                ids, salt = self.path_of(leaf)
                self.blocks.on_evict(ids, leaf.depth, salt)
            parent = self._remove_leaf(leaf)
            if parent.key and not parent.children and parent.lock_ref == 0:
                queue.push(parent)
        if victims:
            self.pool.free(torch.cat(victims))
        return freed

    def _remove_leaf(self, leaf: TreeNode) -> TreeNode:
        parent = leaf.parent
        del parent.children[leaf.key[0]]
        leaf.parent = None
        self._leaves.discard(leaf)
        if not parent.children and parent.key:
            self._leaves.add(parent)
        elif not parent.children and parent is not self.root and self._roots.get(parent.salt) is parent:
            del self._roots[parent.salt]  # a salt's last tokens went: keep no empty roots around
        self._evictable -= len(leaf.key)
        if leaf.hit_count:
            self.hit_tokens -= len(leaf.key)
        return parent

    def reset(self) -> None:
        """Flush: free every cached slot to the pool. Raises RuntimeError if anything is locked."""
        if self._protected:
            raise RuntimeError(f"cannot reset the cache: {self._protected} slots are locked")
        nodes = list(self._walk())
        for n in nodes:
            n.parent = None  # stale handles now fail loudly in lock()
        if nodes:
            self.pool.free(torch.cat([n.value for n in nodes]))
        # NOTE: the root objects stay usable, so requests holding one (an empty match) stay valid.
        for _, root in self.roots():
            root.children.clear()
        self._roots = {"": self.root}
        self._leaves.clear()
        self._evictable = 0
        self.hit_tokens = 0
        if self.ngrams is not None:
            self.ngrams.clear()
        if self.blocks is not None:
            self.blocks.clear()

    # ---- accounting and debugging ---------------------------------------------------------

    def size_info(self) -> CacheSize:
        return CacheSize(self._evictable, self._protected, self._evictable + self._protected)

    def path_of(self, node: TreeNode) -> tuple[list[int], str]:
        """The token ids from its salt's root to the end of `node`'s edge, and that salt."""
        keys = []
        while not isinstance(node, RootNode):
            keys.append(node.key)
            node = node.parent
        return [t for key in reversed(keys) for t in key], node.salt

    def path_ids(self, node: TreeNode) -> list[int]:
        return self.path_of(node)[0]

    def _walk(self) -> Iterator[TreeNode]:
        """Every node but the roots, parents before children."""
        stack = [child for _, root in self.roots() for child in root.children.values()]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def check_integrity(self, running_only_slots: int = 0) -> None:
        """Walk the tree; raise AssertionError (with the numbers) if any invariant is broken.

        `running_only_slots`: slots that running requests hold outside the tree.
        """
        evictable = protected = hit = 0
        values, leaves = [], set()
        for node in self._walk():
            check_node(node)
            values.append(node.value)
            hit += len(node.key) if node.hit_count else 0
            if node.lock_ref:
                protected += len(node.key)
            else:
                evictable += len(node.key)
            if not node.children:
                leaves.add(node)
        if (evictable, protected) != (self._evictable, self._protected):
            raise AssertionError(
                f"counters evictable={self._evictable} protected={self._protected}, "
                f"tree walk evictable={evictable} protected={protected}"
            )
        if leaves != self._leaves:
            raise AssertionError(f"leaf set has {len(self._leaves)} nodes, tree has {len(leaves)}")
        if hit != self.hit_tokens:
            raise AssertionError(f"hit_tokens counter {self.hit_tokens}, tree walk {hit}")
        empty = [salt for salt, root in self._roots.items() if salt and not root.children]
        if empty or self._vacant.children:
            raise AssertionError(
                f"empty salted roots kept: {len(empty)}; vacant root used: {bool(self._vacant.children)}"
            )
        check_slots(values)
        total, free, cap = evictable + protected, self.pool.num_free, self.pool.capacity
        if free + total + running_only_slots != cap:
            raise AssertionError(
                f"slot books do not balance: free {free} + tree {total} + running-only "
                f"{running_only_slots} = {free + total + running_only_slots} != capacity {cap}"
            )

    def to_dict(self, tokenizer: Any = None, salt: str = "") -> dict[str, Any]:
        """Nested plain-data view of `salt`'s tree (JSON-able), for a debug page."""
        return node_dict(self.root_of(salt), tokenizer)

    def pretty(self, tokenizer: Any = None) -> str:
        """Indented text drawing of the tree, one node per line."""
        lines: list[str] = []
        draw(self.to_dict(tokenizer), 0, lines)
        return "\n".join(lines)
