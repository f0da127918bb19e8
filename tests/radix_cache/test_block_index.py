"""Block hashes of what the radix tree holds: chaining, and the index following inserts, evictions
and resets exactly (checked against the hashes recomputed from every path of the tree)."""

from __future__ import annotations

import random

import pytest

from radixrt.radix_cache.block_index import BlockIndex, block_hashes, held_blocks
from radixrt.radix_cache.pool import KVPool
from radixrt.radix_cache.tree import RadixCache


def test_block_hashes_chain_over_whole_blocks():
    a = list(range(40))
    b = list(range(20)) + [99] + list(range(21, 40))  # differs in block 1 (tokens 16..31)
    ha, hb = block_hashes(a, 16), block_hashes(b, 16)
    assert len(ha) == 2  # 40 tokens: two whole blocks, the last 8 tokens not hashed
    assert ha[0] == hb[0] and ha[1] != hb[1]
    assert block_hashes(a[:32], 16) == ha  # a prefix's hashes are a prefix of the hashes
    # chained: the same block after a different prefix hashes differently
    assert block_hashes([7] * 16 + a[16:32], 16)[1] != ha[1]
    # a salt seeds the chain: the same tokens under another salt are another prefix
    assert set(block_hashes(a, 16, "tenant")).isdisjoint(ha) and block_hashes(a, 16, "") == ha
    assert block_hashes(a, 16, "tenant") == block_hashes(a, 16, "tenant") != block_hashes(a, 16, "other")
    assert held_blocks(ha, {ha[0]}) == 1 and held_blocks(ha, set()) == 0 and held_blocks(ha, set(ha)) == 2
    with pytest.raises(ValueError):
        block_hashes(a, 0)


def expected_blocks(tree: RadixCache, block: int) -> set[int]:
    """Every whole block of every root-to-node path of the tree, under the path's salt."""
    out: set[int] = set()
    for node in tree._walk():
        ids, salt = tree.path_of(node)
        out.update(block_hashes(ids, block, salt))
    return out


def test_index_follows_the_tree_through_inserts_evictions_and_reset():
    rng = random.Random(0)
    pool = KVPool(400, num_layers=1, n_kv_heads=1, head_dim=2)
    tree = RadixCache(pool)
    tree.blocks = index = BlockIndex(block_tokens=4)
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(0, 12))] for _ in range(4)]
    for step in range(300):
        if rng.random() < 0.7:
            ids = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(1, 20))]
            if pool.num_free < len(ids):
                tree.evict(len(ids) - pool.num_free)
            slots = pool.alloc(len(ids))
            cached = tree.insert(ids, slots, rng.choice(["", "", "tenant-a", "tenant-b"]))
            pool.free(slots[:cached])  # the tree kept its own slots for the cached part
        else:
            tree.evict(rng.randrange(1, 30))
        got = {h for h in expected_blocks(tree, 4)}
        assert set(index.snapshot(10**6)[1]) == got, f"step {step}"
    assert len(index) > 0
    tree.reset()
    assert len(index) == 0 and index.snapshot(10)[1] == []


def test_snapshot_is_bounded_and_keeps_the_shallowest_blocks():
    index = BlockIndex(block_tokens=2)
    ids = list(range(20))
    index.on_insert(ids, 0)
    version, hashes = index.snapshot(3)
    assert hashes == block_hashes(ids, 2)[:3]
    index.on_evict(ids, 10)  # a leaf from token 10 on leaves: blocks 5..9 go
    assert index.version > version
    assert set(index.snapshot(100)[1]) == set(block_hashes(ids, 2)[:5])
