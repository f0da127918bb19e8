"""Salted roots (no shared token across salts, drafts included), the read-only roots view, node_at,
and the eviction policies: slru's counters move on real hits and change what is evicted."""

from __future__ import annotations

from radixrt.radix_cache.eviction import PROTECTED_SHARE
from radixrt.radix_cache.ngram_index import NgramIndex
from radixrt.radix_cache.pool import KVPool
from radixrt.radix_cache.tree import RadixCache


def make_tree(capacity: int = 64, eviction: str = "lru", ngrams: bool = False) -> RadixCache:
    pool = KVPool(capacity + 1, num_layers=1, n_kv_heads=1, head_dim=1)
    return RadixCache(pool, NgramIndex(4) if ngrams else None, eviction)


def put(tree: RadixCache, ids: list[int], salt: str = "") -> None:
    slots = tree.pool.alloc(len(ids))
    already = tree.insert(ids, slots, salt)
    tree.pool.free(slots[:already])


def test_different_salts_share_not_even_the_first_token():
    tree = make_tree()
    put(tree, [1, 2, 3, 4], salt="a")
    assert tree.peek_prefix([1, 2, 3, 4], "b").length == 0
    assert tree.peek_prefix([1, 9], "").length == 0
    match = tree.match_prefix([1, 2, 3], "b")
    assert match.slots.numel() == 0 and not match.last_node.key
    assert tree.peek_prefix([1, 2, 3, 9], "a").length == 3
    # the same ids under another salt are stored again, with their own slots
    put(tree, [1, 2, 3, 4], salt="b")
    assert tree.size_info().total == 8
    a, b = tree.match_prefix([1, 2, 3, 4], "a").slots, tree.match_prefix([1, 2, 3, 4], "b").slots
    assert set(a.tolist()).isdisjoint(b.tolist())
    assert sorted(salt for salt, _ in tree.roots()) == ["", "a", "b"]
    tree.check_integrity()


def test_a_salt_whose_tokens_are_all_evicted_leaves_no_root_and_lookups_under_it_change_nothing():
    tree = make_tree()
    for salt in ("x", "y"):
        put(tree, [5, 6], salt=salt)
    before = tree.roots()
    tree.peek_prefix([5, 6], "never-seen")
    tree.match_prefix([5, 6], "never-seen")
    assert tree.roots() == before
    assert tree.evict(4) == 4
    assert [salt for salt, _ in tree.roots()] == [""]
    tree.check_integrity()
    assert tree.pool.num_free == tree.pool.capacity


def test_reset_flushes_every_salt():
    tree = make_tree()
    put(tree, [1, 2], "a")
    put(tree, [1, 2])
    tree.reset()
    assert [s for s, _ in tree.roots()] == [""] and tree.size_info().total == 0
    tree.check_integrity()


def test_draft_lookups_never_read_another_salts_sequences():
    tree = make_tree(ngrams=True)
    put(tree, [7, 8, 9, 10, 11], salt="a")
    assert tree.ngrams.continuation([8, 9], 2, salt="a") == ([10, 11], 2)
    assert tree.ngrams.continuation([8, 9], 2, salt="b") == ([], 0)
    assert tree.ngrams.continuation([8, 9], 2) == ([], 0)


def test_node_at_splits_where_the_ids_end_and_counts_no_hit():
    tree = make_tree()
    put(tree, [1, 2, 3, 4, 5], "s")
    node = tree.node_at([1, 2, 3], "s")
    assert node is not None and node.key == [1, 2, 3] and node.hit_count == 0 and tree.hit_tokens == 0
    assert tree.node_at([1, 2, 3], "") is None and tree.node_at([1, 2, 3, 4, 5, 6], "s") is None
    tree.check_integrity()


def test_every_match_counts_a_hit_on_its_path_and_the_hit_token_counter_follows():
    tree = make_tree()
    put(tree, [1, 2, 3, 4])
    assert tree.hit_tokens == 0
    tree.match_prefix([1, 2, 9])  # splits [1 2 | 3 4]; the upper node is hit
    upper = tree.root.children[1]
    assert upper.hit_count == 1 and upper.children[3].hit_count == 0 and tree.hit_tokens == 2
    tree.match_prefix([1, 2, 3, 4])
    assert upper.hit_count == 2 and upper.children[3].hit_count == 1 and tree.hit_tokens == 4
    tree.check_integrity()


def _hot_and_cold(eviction: str) -> RadixCache:
    """An old prefix reused once ([1..4]) and, later, a one-off sequence ([50..53])."""
    tree = make_tree(capacity=12, eviction=eviction)
    put(tree, [1, 2, 3, 4])
    tree.match_prefix([1, 2, 3, 4])
    put(tree, [50, 51, 52, 53])
    return tree


def test_lru_evicts_the_least_recent_leaf_and_slru_the_never_reused_one():
    lru, slru = _hot_and_cold("lru"), _hot_and_cold("slru")
    for tree in (lru, slru):
        tree.evict(4)
        tree.check_integrity()
    assert lru.peek_prefix([1, 2, 3, 4]).length == 0 and lru.peek_prefix([50, 51, 52, 53]).length == 4
    assert slru.peek_prefix([1, 2, 3, 4]).length == 4 and slru.peek_prefix([50, 51, 52, 53]).length == 0


def test_slru_takes_the_protected_segment_first_when_it_outgrows_its_share():
    tree = make_tree(capacity=64, eviction="slru")
    hot = [[10 * i + k for k in range(1, 9)] for i in range(1, 6)]  # 5 reused prefixes, 40 tokens
    for ids in hot:
        put(tree, ids)
        tree.match_prefix(ids)
    put(tree, [99, 98])  # 2 never-hit tokens: the hot share 40/42 is above PROTECTED_SHARE
    assert tree.hit_tokens / tree.size_info().total > PROTECTED_SHARE
    tree.evict(8)
    assert tree.peek_prefix(hot[0]).length == 0  # the least recent hot prefix went first
    assert tree.peek_prefix([99, 98]).length == 2
    tree.check_integrity()


def test_locked_nodes_are_never_evicted_by_either_policy():
    for eviction in ("lru", "slru"):
        tree = make_tree(capacity=8, eviction=eviction)
        put(tree, [1, 2, 3])
        tree.lock(tree.match_prefix([1, 2, 3]).last_node)
        put(tree, [4, 5])
        assert tree.evict(100) == 2 and tree.peek_prefix([1, 2, 3]).length == 3
        tree.check_integrity()
        assert tree.pool.num_free == 5
