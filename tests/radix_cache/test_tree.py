from __future__ import annotations

import pytest
import torch

from radixrt.radix_cache.pool import KVPool
from radixrt.radix_cache.tree import RadixCache, TreeNode


def make_cache(num_slots: int = 64) -> tuple[RadixCache, KVPool]:
    pool = KVPool(num_slots, num_layers=1, n_kv_heads=1, head_dim=2)
    return RadixCache(pool), pool


def put(cache: RadixCache, ids: list[int]) -> torch.Tensor:
    """Cache `ids` the way a finished request with no prefix hit does; returns the tree's slots."""
    slots = cache.pool.alloc(len(ids))
    assert slots is not None
    kept = cache.insert(ids, slots)
    cache.pool.free(slots[:kept])
    return cache.match_prefix(ids).slots


def path_of(node: TreeNode) -> list[int]:
    keys = []
    while node.parent is not None:
        keys = list(node.key) + keys
        node = node.parent
    return keys


def count_nodes(tree: dict) -> int:
    return 1 + sum(count_nodes(c) for c in tree["children"])


def state(cache: RadixCache) -> tuple:
    """Everything a lookup could change: structure, slots, locks, LRU times, hit counts, sizes."""
    return cache.to_dict(), tuple(cache.size_info()), cache.pool.num_free


def test_empty_cache_matches_nothing_at_the_root():
    cache, _ = make_cache()
    result = cache.match_prefix([1, 2, 3])
    assert result.slots.numel() == 0 and result.slots.dtype == torch.int64
    assert result.last_node is cache.root


def test_match_returns_the_inserted_slots_in_order():
    cache, pool = make_cache()
    slots = pool.alloc(4)
    assert cache.insert([1, 2, 3, 4], slots) == 0
    result = cache.match_prefix([1, 2, 3, 4, 5])
    assert result.slots.tolist() == slots.tolist()
    assert path_of(result.last_node) == [1, 2, 3, 4]
    cache.check_integrity()


def test_insert_returns_the_length_already_cached():
    cache, pool = make_cache()
    put(cache, [1, 2, 3])
    slots = pool.alloc(5)
    assert cache.insert([1, 2, 3, 4, 5], slots) == 3
    pool.free(slots[:3])  # duplicates of what the tree already holds
    assert cache.size_info().total == 5
    cache.check_integrity()
    assert cache.insert([1, 2, 3, 4, 5], cache.match_prefix([1, 2, 3, 4, 5]).slots) == 5


def test_match_ending_mid_edge_splits_the_node():
    cache, _ = make_cache()
    stored = put(cache, [1, 2, 3, 4])
    result = cache.match_prefix([1, 2, 9])
    assert result.slots.tolist() == stored[:2].tolist()
    assert result.last_node.key == [1, 2]
    assert [c.key for c in result.last_node.children.values()] == [[3, 4]]
    assert cache.match_prefix([1, 2, 3, 4]).slots.tolist() == stored.tolist()
    cache.check_integrity()


def test_insert_diverging_mid_edge_keeps_both_branches():
    cache, pool = make_cache()
    first = put(cache, [1, 2, 3, 4])
    second = put(cache, [1, 2, 7])
    assert second[:2].tolist() == first[:2].tolist()
    assert sorted(c.key[0] for c in cache.match_prefix([1, 2]).last_node.children.values()) == [
        3,
        7,
    ]
    assert cache.size_info().total == 5
    assert pool.num_free == pool.capacity - 5
    cache.check_integrity()


@pytest.mark.parametrize("mismatch_at", [0, 1, 31, 32, 33, 64, 99])
def test_long_runs_match_up_to_the_first_differing_token(mismatch_at):
    cache, _ = make_cache(num_slots=256)
    ids = list(range(100, 200))
    put(cache, ids)
    query = [*ids[:mismatch_at], 7, *ids[mismatch_at + 1 :]]
    assert cache.match_prefix(query).slots.numel() == mismatch_at
    assert cache.match_prefix(ids[:mismatch_at]).slots.numel() == mismatch_at
    cache.check_integrity()


def test_match_accepts_tensor_ids_and_counts_one_hit_on_each_node_of_the_path():
    cache, _ = make_cache()
    put(cache, [5, 6, 7])
    result = cache.match_prefix(torch.tensor([5, 6, 8]))
    assert result.slots.numel() == 2
    upper = result.last_node
    assert upper.hit_count == 2  # put() matched [5, 6, 7] once, before the split copied its count
    assert cache.match_prefix([5, 6, 7]).last_node.hit_count == 2
    assert upper.hit_count == 3


def test_peek_changes_nothing_where_match_splits_touches_and_counts():
    cache, _ = make_cache()
    put(cache, [1, 2, 3, 4])
    put(cache, [1, 2, 3, 4, 5, 6])
    put(cache, [9])
    before = state(cache)
    for ids in ([1, 2], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7], [9, 9], [7], []):
        cache.peek_prefix(ids)
    assert state(cache) == before
    cache.match_prefix([1, 2, 3, 4, 5])  # the same question, asked mutably
    after = state(cache)
    assert count_nodes(after[0]) == count_nodes(before[0]) + 1
    assert after[0] != before[0]


@pytest.mark.parametrize(
    "ids", [[1, 2], [1, 2, 3, 4], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7], [1, 9], [9, 9], [7], [], list(range(100))]
)
def test_peek_finds_the_length_and_end_that_match_finds(ids):
    cache, _ = make_cache(num_slots=256)
    put(cache, [1, 2, 3, 4])
    put(cache, [1, 2, 3, 4, 5, 6])
    put(cache, [9])
    put(cache, list(range(60)))
    peek = cache.peek_prefix(ids)
    mid_edge = peek.in_node < len(peek.node.key)
    match = cache.match_prefix(ids)
    assert peek.length == match.slots.numel()
    assert path_of(match.last_node) == ids[: peek.length]
    if mid_edge:  # the match split peek.node: its upper part is the new last node
        assert peek.node.parent is match.last_node and len(match.last_node.key) == peek.in_node
    else:
        assert peek.node is match.last_node
    cache.check_integrity()


def test_peek_counts_the_tokens_a_lock_would_take_from_the_evictable():
    cache, _ = make_cache()
    put(cache, [1, 2, 3, 4, 5, 6])
    cache.lock(cache.match_prefix([1, 2]).last_node)
    peek = cache.peek_prefix([1, 2, 3, 4, 9])
    assert (peek.length, peek.unlocked) == (4, 2)
    evictable = cache.size_info().evictable
    cache.lock(cache.match_prefix([1, 2, 3, 4, 9]).last_node)
    assert cache.size_info().evictable == evictable - peek.unlocked
    cache.check_integrity()


def test_path_slots_reads_the_slots_from_the_root_without_touching_anything():
    cache, _ = make_cache()
    stored = put(cache, [1, 2, 3, 4])
    put(cache, [1, 2, 7])
    node = cache.peek_prefix([1, 2, 3, 4]).node
    before = state(cache)
    assert cache.path_slots(node).tolist() == stored.tolist()
    assert cache.path_slots(cache.root).numel() == 0
    assert state(cache) == before


def test_returned_slots_and_inserted_slots_are_copies():
    cache, pool = make_cache()
    slots = pool.alloc(3)
    expected = slots.tolist()
    cache.insert([1, 2, 3], slots)
    slots.fill_(0)
    matched = cache.match_prefix([1, 2, 3]).slots
    assert matched.tolist() == expected
    matched.fill_(0)
    assert cache.match_prefix([1, 2, 3]).slots.tolist() == expected


def test_insert_with_mismatched_lengths_raises():
    cache, pool = make_cache()
    with pytest.raises(ValueError):
        cache.insert([1, 2, 3], pool.alloc(2))


def test_lock_moves_slots_from_evictable_to_protected_and_back():
    cache, _ = make_cache()
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 4, 5])
    node = cache.match_prefix([1, 2, 4, 5]).last_node
    cache.lock(node)
    cache.lock(node)
    assert tuple(cache.size_info()) == (1, 4, 5)
    cache.unlock(node)
    assert tuple(cache.size_info()) == (1, 4, 5)
    cache.unlock(node)
    assert tuple(cache.size_info()) == (5, 0, 5)
    cache.check_integrity()


def test_unlocking_below_zero_raises():
    cache, _ = make_cache()
    put(cache, [1, 2])
    node = cache.match_prefix([1, 2]).last_node
    with pytest.raises(RuntimeError):
        cache.unlock(node)
    cache.check_integrity()


def test_locked_nodes_survive_eviction():
    cache, pool = make_cache()
    put(cache, [1, 2, 3])
    put(cache, [4, 5])
    node = cache.match_prefix([1, 2, 3]).last_node
    cache.lock(node)
    assert cache.evict(100) == 2
    assert cache.match_prefix([1, 2, 3]).slots.numel() == 3
    assert pool.num_free == pool.capacity - 3
    cache.check_integrity()


def test_a_lock_stays_correct_when_a_later_match_splits_its_node():
    cache, _ = make_cache()
    put(cache, [1, 2, 3, 4])
    node = cache.match_prefix([1, 2, 3, 4]).last_node
    cache.lock(node)
    cache.match_prefix([1, 2])  # splits the locked edge
    assert cache.size_info().protected == 4
    assert cache.evict(100) == 0
    cache.unlock(node)
    assert tuple(cache.size_info()) == (4, 0, 4)
    cache.check_integrity()


def test_evict_takes_least_recently_used_leaves_first():
    cache, _ = make_cache()
    put(cache, [1, 1])
    put(cache, [2, 2])
    put(cache, [3, 3])
    cache.match_prefix([1, 1])  # now [2, 2] is the oldest
    assert cache.evict(1) == 2
    assert cache.match_prefix([2, 2]).slots.numel() == 0
    assert cache.evict(1) == 2
    assert cache.match_prefix([3, 3]).slots.numel() == 0
    assert cache.match_prefix([1, 1]).slots.numel() == 2
    cache.check_integrity()


def test_eviction_cascades_to_parents_that_become_leaves():
    cache, pool = make_cache()
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 4])
    put(cache, [9])
    cache.match_prefix([9])  # the [1, 2] subtree is older
    assert cache.evict(4) == 4  # both [3] and [4], then their parent [1, 2]
    assert cache.match_prefix([1]).slots.numel() == 0
    assert cache.match_prefix([9]).slots.numel() == 1
    assert pool.num_free == pool.capacity - 1
    cache.check_integrity()


def test_evict_frees_whole_leaves_and_everything_when_asked_for_more():
    cache, pool = make_cache()
    put(cache, [1, 2, 3, 4])
    assert cache.evict(1) == 4
    put(cache, [5, 6])
    put(cache, [7])
    assert cache.evict(1000) == 3
    assert pool.num_free == pool.capacity
    assert cache.evict(5) == 0
    cache.check_integrity()


def test_last_access_is_a_deterministic_logical_clock():
    cache, _ = make_cache()
    put(cache, [1, 2])
    put(cache, [3])
    a = cache.match_prefix([1, 2]).last_node
    b = cache.match_prefix([3]).last_node
    assert b.last_access == a.last_access + 1
    assert a.hit_count == 2  # put() matched it once too


def test_reset_frees_every_slot_and_refuses_while_locked():
    cache, pool = make_cache()
    put(cache, [1, 2, 3])
    put(cache, [1, 4])
    node = cache.match_prefix([1, 4]).last_node
    cache.lock(node)
    with pytest.raises(RuntimeError, match="locked"):
        cache.reset()
    cache.unlock(node)
    cache.reset()
    assert pool.num_free == pool.capacity
    assert tuple(cache.size_info()) == (0, 0, 0)
    assert cache.match_prefix([1, 2, 3]).slots.numel() == 0
    with pytest.raises(RuntimeError, match="no longer in the tree"):
        cache.lock(node)
    cache.check_integrity()


def test_check_integrity_reports_slots_missing_from_the_books():
    cache, pool = make_cache()
    put(cache, [1, 2])
    leaked = pool.alloc(3)
    with pytest.raises(AssertionError, match="capacity"):
        cache.check_integrity()
    cache.check_integrity(running_only_slots=3)
    pool.free(leaked)
    cache.check_integrity()


def test_to_dict_and_pretty_draw_the_tree():
    class Tok:
        def decode(self, ids):
            return "".join(chr(ord("a") + i) for i in ids)

    cache, _ = make_cache()
    put(cache, [0, 1, 2])
    put(cache, [0, 1, 3])
    tree = cache.to_dict()
    (top,) = tree["children"]
    assert top["key"] == [0, 1] and len(top["slots"]) == 2
    assert [c["key"] for c in top["children"]] == [[2], [3]]
    text = cache.pretty(Tok()).splitlines()
    assert text[0].startswith("<root>")
    assert "'ab'" in text[1] and "'c'" in text[2] and "'d'" in text[3]


def test_an_empty_match_handle_stays_valid_across_reset():
    cache, _ = make_cache()
    put(cache, [1, 2])
    root = cache.match_prefix([7]).last_node
    cache.lock(root)
    cache.reset()
    cache.unlock(root)
    assert cache.match_prefix([1]).last_node is root
    cache.check_integrity()
