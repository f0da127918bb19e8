"""Draft lookups over the radix tree: what followed the same n tokens in cached sequences, most
recent first, read without changing the tree, through splits, evictions and flushes."""

from __future__ import annotations

import random

import pytest

from radixrt.radix_cache.ngram_index import NgramIndex
from radixrt.radix_cache.pool import KVPool
from radixrt.radix_cache.tree import RadixCache
from tests.radix_cache.test_tree import state


def make(num_slots: int = 256, capacity: int = 1 << 16) -> RadixCache:
    return RadixCache(KVPool(num_slots, num_layers=1, n_kv_heads=1, head_dim=2), NgramIndex(4, capacity))


def put(cache: RadixCache, ids: list[int]) -> None:
    """Cache `ids` as a finished request with no prefix hit does."""
    slots = cache.pool.alloc(len(ids))
    kept = cache.insert(ids, slots)
    cache.pool.free(slots[:kept])


def test_the_continuation_of_the_longest_suffix_found_is_read_from_the_tree():
    cache = make()
    put(cache, [1, 2, 3, 4, 5, 6, 7, 8])
    assert cache.ngrams.continuation([9, 3, 4], 3) == ([5, 6, 7], 2)  # (9, 3, 4) unseen; (3, 4) seen
    assert cache.ngrams.continuation([6], 5) == ([7, 8], 1)  # the sequence ends there
    assert cache.ngrams.continuation([8], 5) == ([], 0)  # nothing followed it yet
    put(cache, [1, 2, 3, 4, 5, 6, 7, 8, 40, 41])  # now something does
    assert cache.ngrams.continuation([8], 5) == ([40, 41], 1)
    assert cache.ngrams.continuation([9, 3, 4], 3, min_n=3) == ([], 0)


def test_the_most_recent_occurrence_wins_and_reads_on_into_the_most_recently_used_branch():
    cache = make()
    put(cache, [1, 2, 3, 10, 11])
    put(cache, [5, 2, 3, 20, 21])  # (2, 3) again, in a later request
    assert cache.ngrams.continuation([2, 3], 2) == ([20, 21], 2)
    put(cache, [1, 2, 3, 30])  # a branch under the first sequence, inserted last
    assert cache.ngrams.continuation([1, 2, 3], 2) == ([30], 3)  # its (1, 2, 3) ends where the edge was cut
    assert cache.ngrams.continuation([2, 3], 2) == ([30], 2)


def test_lookups_change_nothing_in_the_tree():
    cache = make()
    for seq in ([1, 2, 3, 4, 5], [1, 2, 9, 9], [7, 3, 4, 6]):
        put(cache, seq)
    before = state(cache)
    for tail in ([3, 4], [2], [1, 2], [9], [4, 6]):
        cache.ngrams.continuation(tail, 4)
    assert state(cache) == before


def test_locations_survive_later_splits_of_their_edge():
    cache = make()
    put(cache, list(range(10, 30)))
    for cut in (5, 12, 3):  # each insert splits the first edge somewhere
        put(cache, [*range(10, 10 + cut), 99])
    assert cache.ngrams.continuation([14, 15], 4) == ([16, 17, 18, 19], 2)
    assert cache.ngrams.continuation([26, 27], 4) == ([28, 29], 2)
    cache.check_integrity()  # node depths agree with their parents' after the splits


def test_evicted_sequences_are_not_drafted_from():
    cache = make(num_slots=64)
    put(cache, [1, 2, 3, 4, 5])
    put(cache, [7, 8, 9])
    cache.evict(cache.size_info().evictable)
    assert cache.pool.num_free == cache.pool.capacity
    assert cache.ngrams.continuation([2, 3], 2) == ([], 0)
    assert cache.ngrams.continuation([7, 8], 2) == ([], 0)


def test_a_flush_empties_the_index():
    cache = make()
    put(cache, [1, 2, 3])
    cache.reset()
    assert len(cache.ngrams) == 0 and cache.ngrams.continuation([1, 2], 1) == ([], 0)


def test_the_index_holds_at_most_its_capacity_dropping_the_oldest_first():
    cache = make(capacity=20)
    put(cache, list(range(100, 140)))
    assert len(cache.ngrams) == 20
    assert cache.ngrams.continuation([137, 138], 1) == ([139], 2)  # recent: kept
    assert cache.ngrams.continuation([101], 1) == ([], 0)  # oldest: dropped


def test_every_continuation_agrees_with_a_scan_of_the_cached_sequences():
    rng = random.Random(3)
    cache = make(num_slots=4096)
    seqs = []
    for _ in range(40):
        base = rng.choice(seqs)[: rng.randrange(1, 12)] if seqs and rng.random() < 0.5 else []
        seq = base + [rng.randrange(6) for _ in range(rng.randrange(2, 12))]
        put(cache, seq)
        seqs.append(seq)
    for _ in range(300):
        tail = [rng.randrange(6) for _ in range(rng.randrange(1, 5))]
        tokens, n = cache.ngrams.continuation(tail, 3)
        if n:  # what it read follows that suffix in some cached sequence
            suffix = tail[len(tail) - n :]
            assert any(
                s[i : i + n] == suffix and s[i + n : i + n + len(tokens)] == tokens for s in seqs for i in range(len(s))
            ), (tail, tokens)
        else:  # no suffix of length >= 1 occurs with a token after it
            assert not any(s[i : i + 1] == tail[-1:] for s in seqs for i in range(len(s) - 1))


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="max_n and capacity"):
        NgramIndex(0)


def test_inserts_are_indexed_at_the_first_lookup_and_only_from_min_n_tokens():
    cache = RadixCache(KVPool(256, num_layers=1, n_kv_heads=1, head_dim=2), NgramIndex(4, 1 << 16, min_n=2))
    put(cache, [1, 2, 3, 4, 5])
    assert cache.ngrams._where == {}  # queued: a server whose requests never draft never indexes
    assert cache.ngrams.continuation([2, 3], 2) == ([4, 5], 2)
    assert cache.ngrams.continuation([3], 2) == ([], 0)  # 1-grams are not kept
    assert len(cache.ngrams) == 3 + 2 + 1  # the 2-, 3- and 4-grams something follows
    put(cache, [7, 8, 9, 10])
    cache.evict(9)  # both gone, the second before anyone looked: never indexed
    assert cache.ngrams.continuation([7, 8], 2) == ([], 0)
    assert len(cache.ngrams) == 6  # the first one's entries, stale until looked up
    with pytest.raises(ValueError, match="min_n"):
        NgramIndex(2, 10, min_n=3)
