from __future__ import annotations

import pytest
import torch

from radixrt.radix_cache.pool import KVPool, ReqToToken


def make_pool(num_slots: int = 8) -> KVPool:
    return KVPool(num_slots, num_layers=2, n_kv_heads=2, head_dim=4)


def test_capacity_excludes_the_padding_slot():
    pool = make_pool(8)
    assert pool.capacity == 7
    assert pool.num_free == 7
    assert len(pool.k_buffers) == len(pool.v_buffers) == 2
    assert pool.k_buffers[0].shape == (8, 2, 4)


def test_slot_zero_is_never_handed_out():
    pool = make_pool(8)
    slots = pool.alloc(7)
    assert slots is not None and slots.dtype == torch.int64
    assert sorted(slots.tolist()) == list(range(1, 8))
    assert pool.alloc(1) is None


def test_alloc_then_free_returns_the_same_slots():
    pool = make_pool(8)
    first = pool.alloc(3)
    assert pool.num_free == 4
    pool.free(first)
    assert pool.num_free == 7
    everything = pool.alloc(7)
    assert sorted(everything.tolist()) == list(range(1, 8))


def test_allocated_slots_are_distinct_across_calls():
    pool = make_pool(16)
    a, b, c = pool.alloc(5), pool.alloc(5), pool.alloc(5)
    together = torch.cat([a, b, c]).tolist()
    assert len(set(together)) == 15


def test_alloc_of_too_many_returns_none_and_changes_nothing():
    pool = make_pool(8)
    held = pool.alloc(5)
    assert pool.alloc(3) is None
    assert pool.num_free == 2
    rest = pool.alloc(2)
    assert set(rest.tolist()).isdisjoint(held.tolist())


def test_alloc_zero_and_free_empty_are_no_ops():
    pool = make_pool(8)
    assert pool.alloc(0).numel() == 0
    pool.free(torch.empty(0, dtype=torch.int64))
    assert pool.num_free == 7


def test_freeing_more_than_was_allocated_raises():
    pool = make_pool(8)
    slots = pool.alloc(2)
    pool.free(slots)
    with pytest.raises(RuntimeError, match="double free"):
        pool.free(slots)
    assert pool.num_free == 7


def test_double_free_of_one_slot_while_others_are_held_is_detected():
    pool = make_pool(8)
    slots = pool.alloc(4)
    pool.free(slots[:1])
    with pytest.raises(RuntimeError):
        pool.free(slots[:1])


def test_free_accepts_int32_slots():
    pool = make_pool(8)
    slots = pool.alloc(3)
    pool.free(slots.to(torch.int32))
    assert sorted(pool.alloc(7).tolist()) == list(range(1, 8))


def test_pool_needs_a_real_slot_beside_the_padding_slot():
    with pytest.raises(ValueError):
        KVPool(1, num_layers=1, n_kv_heads=1, head_dim=1)


def test_bytes_per_slot_counts_k_and_v_of_every_layer():
    assert KVPool.bytes_per_slot(num_layers=3, n_kv_heads=2, head_dim=8, dtype=torch.bfloat16) == (2 * 3 * 2 * 8 * 2)


def test_req_to_token_rows_are_reused_after_free():
    table = ReqToToken(max_running=2, max_context=8)
    a, b = table.alloc(), table.alloc()
    assert {a, b} == {0, 1}
    assert table.alloc() is None
    table.free(a)
    assert table.num_free == 1
    assert table.alloc() == a


def test_req_to_token_write_then_read_round_trips():
    table = ReqToToken(max_running=2, max_context=8)
    row = table.alloc()
    table.write(row, 0, torch.tensor([5, 6, 7]))
    table.write(row, 3, torch.tensor([9]))
    assert table.read(row, 4).tolist() == [5, 6, 7, 9]


@pytest.mark.parametrize("seed", range(5))
def test_deferred_writes_read_as_immediate_ones(seed):
    """A GPU's table keeps writes until the next read and makes them in one copy: whatever the
    order, overlaps and reads between them, it reads as the table that wrote at once."""
    gen = torch.Generator().manual_seed(seed)
    now, later = ReqToToken(4, 32), ReqToToken(4, 32, deferred=True)
    for step in range(200):
        row, start = int(torch.randint(0, 4, (1,), generator=gen)), int(torch.randint(0, 30, (1,), generator=gen))
        slots = torch.randint(1, 1000, (int(torch.randint(1, 33 - start, (1,), generator=gen)),), generator=gen)
        now.write(row, start, slots)
        later.write(row, start, slots)
        if step % 7 == 6:
            assert torch.equal(later.read(row, 32), now.read(row, 32))
    assert torch.equal(later.table, now.table)
