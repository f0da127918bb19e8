"""Waiting-queue orders over a real tree, asked through the cache manager's read-only lookups."""

from __future__ import annotations

import pytest

from radixrt.runtime.scheduler.policy import order_waiting
from tests.runtime.scheduler.cache_helpers import cached_sequence, make_cache, new_req

LONG = [1, 2, 3, 4, 5, 6, 7, 8]  # one edge of the tree
SHORT = [20, 21, 22]


def tree_with_two_branches():
    cache = make_cache()
    cached_sequence(cache, LONG)
    cached_sequence(cache, SHORT)
    return cache


def order(cache, policy, waiting, max_wait_passes=100):
    return [r.rid for r in order_waiting(policy, waiting, cache.prefix_len, cache.prefix_path, max_wait_passes)]


def queue():
    """(rid by arrival): cached prefix length."""
    prompts = [
        [50, 51],  # r0: 0
        [20, 21, 99],  # r1: 2, inside SHORT's edge
        [*LONG, 99],  # r2: 8, the whole of LONG
        [1, 2, 3, 99],  # r3: 3, inside LONG's edge
        [*LONG[:5], 99],  # r4: 5, inside LONG's edge
        [*SHORT, 99],  # r5: 3, the whole of SHORT
    ]
    return [new_req(p, arrival=i) for i, p in enumerate(prompts)]


def test_lpm_orders_the_longest_cached_prefix_first_then_by_arrival():
    cache = tree_with_two_branches()
    assert order(cache, "lpm", queue()) == ["r2", "r4", "r3", "r5", "r1", "r0"]


def test_dfs_weight_walks_heavier_subtrees_first_and_shorter_prefixes_first_within_an_edge():
    cache = tree_with_two_branches()
    # the root's own request, then LONG's subtree (3 waiting) before SHORT's (2); inside an edge
    # the order a split there would give: the shorter prefix first
    assert order(cache, "dfs-weight", queue()) == ["r0", "r3", "r4", "r2", "r1", "r5"]


def test_dfs_weight_takes_equally_heavy_subtrees_oldest_request_first():
    cache = tree_with_two_branches()
    late_long, early_short = new_req([*LONG, 9], arrival=5), new_req([*SHORT, 9], arrival=2)
    assert order(cache, "dfs-weight", [late_long, early_short]) == [early_short.rid, late_long.rid]


def test_fcfs_and_starved_requests_ignore_the_cache():
    cache = tree_with_two_branches()
    waiting = queue()
    assert order(cache, "fcfs", waiting) == [f"r{i}" for i in range(6)]
    waiting[0].wait_passes = waiting[3].wait_passes = 5
    assert order(cache, "lpm", waiting, max_wait_passes=5)[:2] == ["r0", "r3"]


@pytest.mark.parametrize("policy", ["lpm", "dfs-weight"])
def test_ordering_over_many_passes_leaves_the_tree_unchanged(policy):
    cache = tree_with_two_branches()
    waiting = queue()
    before = cache.tree.to_dict(), tuple(cache.tree.size_info())
    first = order(cache, policy, waiting)
    for _ in range(50):
        assert order(cache, policy, waiting) == first
    assert (cache.tree.to_dict(), tuple(cache.tree.size_info())) == before
    cache.check([])
