"""CacheManager without a model: lookups that change nothing, one match per admission, jump-forward's
frees, and the disabled mode, with the slot books checked throughout."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.runtime.scheduler.cache_helpers import admit_and_prefill, cached_sequence, decode, make_cache, new_req

SHARED = [1, 2, 3, 4, 5, 6, 7, 8]


def test_lookups_change_nothing_and_agree_with_the_admission_match():
    cache = make_cache()
    cached_sequence(cache, SHARED)
    req = new_req([1, 2, 3, 4, 9, 9])
    before = cache.tree.to_dict()
    for _ in range(20):  # what a queue does over 20 ordering passes
        assert cache.prefix_len(req) == 4
        cache.prefix_path(req)
        cache.peek(req)
    assert cache.tree.to_dict() == before
    admit_and_prefill(cache, req)
    assert req.prefix_len == 4 and req.cached_tokens == 4
    cache.check([req])


def test_prefix_path_names_the_nodes_from_the_root_to_where_the_prefix_ends():
    cache = make_cache()
    cached_sequence(cache, SHARED)
    cached_sequence(cache, [*SHARED[:4], 30, 31])  # splits SHARED after 4 tokens
    root = cache.tree.root
    upper = root.children[1]
    lower = upper.children[5]
    assert cache.prefix_path(new_req([50, 51])) == (root.id,)
    assert cache.prefix_path(new_req([1, 2, 9])) == (root.id, upper.id)
    assert cache.prefix_path(new_req([*SHARED, 9])) == (root.id, upper.id, lower.id)


def test_each_admission_counts_one_hit_and_taking_back_ones_own_prompt_counts_none():
    cache = make_cache()
    cached_sequence(cache, SHARED)
    node = cache.tree.root.children[1]
    hits, prompts = cache.hit_tokens, cache.prompt_tokens
    first, second = new_req([*SHARED, 20, 21], 1), new_req([*SHARED, 30], 2)
    for _ in range(10):
        cache.prefix_len(first), cache.prefix_len(second)
    admit_and_prefill(cache, first)
    assert node.hit_count == 1
    cache.cache_prefix(first)  # first's prompt is now in the tree, borrowed back
    assert node.hit_count == 1 and first.prefix_len == len(SHARED) + 2
    admit_and_prefill(cache, second)
    assert node.hit_count == 2
    assert (cache.hit_tokens - hits, cache.prompt_tokens - prompts) == (2 * len(SHARED), 2 * len(SHARED) + 3)
    cache.check([first, second])


def test_a_borrow_takes_exactly_the_unlocked_slots_the_peek_counted():
    cache = make_cache()
    cached_sequence(cache, SHARED)
    holder = new_req([1, 2, 3, 40])
    admit_and_prefill(cache, holder)  # locks [1, 2, 3]
    req = new_req([*SHARED[:6], 50])
    prefix = cache.peek(req)
    assert (prefix.length, prefix.unlocked) == (6, 3)
    expected = cache.available_after_borrow(prefix)
    cache.admit(req, 0)
    assert cache.available() == expected
    cache.check([holder, req])


def test_uncompute_frees_a_private_tail_and_refuses_the_borrowed_prefix():
    cache = make_cache()
    cached_sequence(cache, SHARED)
    req = new_req([*SHARED, 9, 10])
    admit_and_prefill(cache, req)
    decode(cache, req, 11)
    decode(cache, req, 12)
    assert (req.prefix_len, req.computed) == (len(SHARED), len(SHARED) + 4)
    assert cache.can_uncompute(req, 4) and not cache.can_uncompute(req, 5)
    free = cache.pool.num_free
    cache.uncompute(req, 3)
    assert req.computed == len(SHARED) + 1 and cache.pool.num_free == free + 3
    cache.check([req])
    with pytest.raises(AssertionError, match="borrowed prefix"):
        cache.uncompute(req, 2)
    cache.release(req)
    cache.check([])


def test_disabled_mode_never_hits_and_caches_nothing():
    cache = make_cache(disabled=True)
    cached_sequence(cache, SHARED)
    req = new_req([*SHARED, 9])
    assert cache.prefix_len(req) == 0 and cache.prefix_path(req) == (cache.tree.root.id,)
    admit_and_prefill(cache, req)
    cache.cache_prefix(req)
    assert (req.prefix_len, req.cached_tokens, cache.hit_tokens) == (0, 0, 0)
    cache.release(req)
    assert tuple(cache.tree.size_info()) == (0, 0, 0) and cache.pool.num_free == cache.pool.capacity
    cache.check([])


PROMPTS = st.lists(st.integers(1, 3), min_size=1, max_size=6)


@pytest.mark.parametrize("disabled", [False, True])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_books_balance_through_admit_prefill_decode_and_release(disabled, data):
    """Requests start, take back their prompt, decode and finish in any interleaving, cache on or off."""
    cache = make_cache(capacity=96, rows=4, disabled=disabled)
    running = []
    for step in range(data.draw(st.integers(1, 12))):
        if len(running) < 4 and data.draw(st.booleans()):
            req = new_req(data.draw(PROMPTS), arrival=step)
            admit_and_prefill(cache, req)
            cache.cache_prefix(req)
            running.append(req)
        elif running:
            req = running[data.draw(st.integers(0, len(running) - 1))]
            if data.draw(st.booleans()):
                decode(cache, req, data.draw(st.integers(1, 3)))
            else:
                running.remove(req)
                cache.release(req)
        cache.check(running)
    for req in running:
        cache.release(req)
    cache.check([])
    if disabled:
        assert cache.hit_tokens == 0 and cache.tree.size_info().total == 0
        assert cache.pool.num_free == cache.pool.capacity
