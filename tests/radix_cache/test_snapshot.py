"""Snapshots of the radix tree and its KV rows: round trips, partial loads, damage, a full disk."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from radixrt.radix_cache.pool import KVPool
from radixrt.radix_cache.snapshot import SaveJob, load_snapshot
from radixrt.radix_cache.snapshot_file import RowLayout, SnapshotError, SnapshotReader, SnapshotWriter, snapshot_path
from radixrt.radix_cache.tier import TierError
from radixrt.radix_cache.tree import RadixCache

KEY = {"weights": "w1", "radixrt": "test"}
SHARED = list(range(100, 140))  # a 40-token "system prompt"
SEQS = [SHARED + [1, 2, 3, 4, 5], SHARED + [1, 2, 9], SHARED + [7] * 12, [5, 6, 7, 8]]


def make_tree(num_slots: int = 128) -> RadixCache:
    return RadixCache(KVPool(num_slots, num_layers=2, n_kv_heads=2, head_dim=4, dtype=torch.bfloat16))


def fill(tree: RadixCache, seqs: list[list[int]]) -> dict[tuple[int, ...], torch.Tensor]:
    """Insert `seqs` with random rows (as finished requests would); returns each one's rows."""
    gen = torch.Generator().manual_seed(0)
    for seq in seqs:
        slots = tree.pool.alloc(len(seq))
        shape = (2, 2, len(seq), 2, 4)
        tree.pool.write_rows(slots, torch.randn(shape, generator=gen).to(torch.bfloat16))
        kept = tree.insert(seq, slots)
        tree.pool.free(slots[:kept])
    return {tuple(s): rows_of(tree, s) for s in seqs}


def rows_of(tree: RadixCache, seq: list[int]) -> torch.Tensor:
    peek = tree.peek_prefix(seq)
    assert peek.length == len(seq), f"only {peek.length} of {len(seq)} tokens cached"
    return tree.pool.read_rows(tree.path_slots(peek.node)[: len(seq)])


def save(tree: RadixCache, path: Path, piece_tokens: int = 16, **writer_kw) -> SaveJob:
    writer = SnapshotWriter(path, KEY, RowLayout.of(tree.pool), **writer_kw)
    job = SaveJob(tree, writer, piece_tokens)
    job.advance(None)
    writer.finish()
    return job


def load(path: Path, num_slots: int = 128, key=KEY) -> tuple[RadixCache, int]:
    tree = make_tree(num_slots)
    reader = SnapshotReader(path, key, RowLayout.of(tree.pool))
    try:
        result = load_snapshot(reader, tree)
    finally:
        reader.close()
    tree.check_integrity()
    return tree, result.tokens


def test_round_trip_restores_every_sequence_with_identical_rows(tmp_path):
    tree = make_tree()
    rows = fill(tree, SEQS)
    job = save(tree, tmp_path / "s.rxkv", piece_tokens=16)  # the 40-token edge becomes 3 pieces
    assert job.saved_tokens == tree.size_info().total
    restored, tokens = load(tmp_path / "s.rxkv")
    assert tokens == tree.size_info().total
    for seq, expected in rows.items():
        assert torch.equal(rows_of(restored, list(seq)), expected)
    assert restored.pool.num_free + restored.size_info().total == restored.pool.capacity


def test_each_salt_comes_back_under_its_own_root_and_never_under_another(tmp_path):
    tree = make_tree(256)
    gen = torch.Generator().manual_seed(1)
    rows = {}
    for salt, seq in [("", SEQS[0]), ("tenant-a", SEQS[0]), ("tenant-b", SEQS[3])]:
        slots = tree.pool.alloc(len(seq))
        tree.pool.write_rows(slots, torch.randn((2, 2, len(seq), 2, 4), generator=gen).to(torch.bfloat16))
        assert tree.insert(seq, slots, salt) == 0  # different salts never share a prefix
        rows[salt] = tree.pool.read_rows(slots)
    save(tree, tmp_path / "s.rxkv")
    restored, tokens = load(tmp_path / "s.rxkv", num_slots=256)
    assert tokens == len(SEQS[0]) * 2 + len(SEQS[3])
    assert {salt for salt, _ in restored.roots()} >= {"", "tenant-a", "tenant-b"}
    for salt, seq in [("", SEQS[0]), ("tenant-a", SEQS[0]), ("tenant-b", SEQS[3])]:
        peek = restored.peek_prefix(seq, salt)
        assert peek.length == len(seq), salt
        assert torch.equal(restored.pool.read_rows(restored.path_slots(peek.node)[: len(seq)]), rows[salt])
    assert restored.peek_prefix(SEQS[3], "tenant-a").length == 0
    assert restored.peek_prefix(SEQS[3], "").length == 0


def test_a_small_pool_loads_the_shared_prefix_first_and_what_fits(tmp_path):
    tree = make_tree()
    rows = fill(tree, SEQS)
    save(tree, tmp_path / "s.rxkv", piece_tokens=16)
    small, tokens = load(tmp_path / "s.rxkv", num_slots=48)  # 47 usable of 65 saved
    assert tokens == 47 and small.pool.num_free == 0
    assert small.peek_prefix(SHARED).length == len(SHARED)  # the shared run first, whole
    for seq in SEQS:  # whatever was loaded holds the saved rows
        n = small.peek_prefix(seq).length
        if n:
            got = small.pool.read_rows(small.path_slots(small.peek_prefix(seq).node)[:n])
            assert torch.equal(got, rows[tuple(seq)][:, :, :n])


def test_a_corrupt_block_fails_the_load_and_leaves_the_pool_empty(tmp_path):
    tree = make_tree()
    fill(tree, SEQS)
    path = tmp_path / "s.rxkv"
    save(tree, path)
    data = bytearray(path.read_bytes())
    data[64 + 5] ^= 0xFF  # inside the first block's rows
    path.write_bytes(bytes(data))
    fresh = make_tree()
    reader = SnapshotReader(path, KEY, RowLayout.of(fresh.pool))
    with pytest.raises(TierError, match="checksum"):
        load_snapshot(reader, fresh)
    reader.close()
    assert fresh.size_info().total == 0 and fresh.pool.num_free == fresh.pool.capacity
    fresh.check_integrity()


@pytest.mark.parametrize("damage", ["truncate", "index", "empty", "garbage"])
def test_a_damaged_file_is_refused_on_open(tmp_path, damage):
    tree = make_tree()
    fill(tree, SEQS)
    path = tmp_path / "s.rxkv"
    save(tree, path)
    data = path.read_bytes()
    damaged = {
        "truncate": data[: len(data) // 2],
        "index": data[:-40] + bytes([data[-40] ^ 0xFF]) + data[-39:],
        "empty": b"",
        "garbage": b"x" * 200,
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(SnapshotError):
        SnapshotReader(path, KEY, RowLayout.of(make_tree().pool))


def test_another_key_or_layout_is_refused_naming_what_differs(tmp_path):
    tree = make_tree()
    fill(tree, SEQS)
    save(tree, tmp_path / "s.rxkv")
    with pytest.raises(SnapshotError, match="weights: 'w1' != 'w2'"):
        SnapshotReader(tmp_path / "s.rxkv", {**KEY, "weights": "w2"}, RowLayout.of(tree.pool))
    other = KVPool(16, num_layers=2, n_kv_heads=2, head_dim=4, dtype=torch.float32)
    with pytest.raises(SnapshotError, match="dtype: 'bfloat16' != 'float32'"):
        SnapshotReader(tmp_path / "s.rxkv", KEY, RowLayout.of(other))
    assert snapshot_path(tmp_path, KEY) != snapshot_path(tmp_path, {**KEY, "weights": "w2"})


class _FullDisk:
    """A file that takes `room` bytes, then fails every write with ENOSPC."""

    def __init__(self, path: Path, room: int):
        self.file, self.room = open(path, "wb"), room

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if n > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= n
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


@pytest.mark.parametrize("background", [False, True])
def test_a_full_disk_removes_the_partial_file_and_keeps_the_previous_snapshot(tmp_path, background):
    tree = make_tree()
    rows = fill(tree, SEQS)
    path = tmp_path / "s.rxkv"
    save(tree, path)
    before = path.read_bytes()
    fill(tree, [[9, 9, 9, 9, 9]])
    writer = SnapshotWriter(path, KEY, RowLayout.of(tree.pool), background=background,
                            opener=lambda p: _FullDisk(p, room=2000))  # fmt: skip
    job = SaveJob(tree, writer, 16)
    while not job.finished:  # a background writer takes a few blocks at a time
        job.advance(None)
    if background:
        writer.finish()
        assert writer.done.wait(10)
    else:
        with pytest.raises(OSError) as info:
            writer.finish()
        assert info.value.errno == errno.ENOSPC
    assert writer.error is not None and writer.error.errno == errno.ENOSPC
    assert not writer.tmp.exists()
    assert path.read_bytes() == before
    restored, _ = load(path)
    assert torch.equal(rows_of(restored, SEQS[0]), rows[tuple(SEQS[0])])
    tree.check_integrity()


def test_a_save_in_steps_drops_nodes_evicted_meanwhile_and_keeps_split_ones(tmp_path):
    tree = make_tree()
    rows = fill(tree, SEQS)
    writer = SnapshotWriter(tmp_path / "s.rxkv", KEY, RowLayout.of(tree.pool), background=True)
    job = SaveJob(tree, writer, piece_tokens=8)
    job.advance(8)  # the first piece of the shared run
    assert not job.finished and job.saved_tokens == 8
    tree.match_prefix(SHARED[:20])  # splits the shared run's node in the middle
    tree.match_prefix(SEQS[0])  # the other leaves are older: evicted first
    assert tree.evict(1 + 12 + 4) == 17  # [9], [7 x 12], [5 6 7 8]
    reused = tree.pool.alloc(tree.pool.num_free)  # their slots now belong to someone else
    tree.pool.write_rows(reused, torch.zeros((2, 2, reused.numel(), 2, 4), dtype=torch.bfloat16))
    while not job.finished:
        job.advance(8)
    writer.finish()
    assert writer.done.wait(10) and writer.error is None
    assert job.dropped_tokens == 4 + 1 + 12
    restored, tokens = load(tmp_path / "s.rxkv")
    assert tokens == tree.size_info().total
    assert torch.equal(rows_of(restored, SEQS[0]), rows[tuple(SEQS[0])])
    assert restored.peek_prefix(SEQS[3]).length == 0 and restored.peek_prefix(SEQS[2]).length == len(SHARED)


def test_pool_rows_round_trip_and_reject_a_wrong_shape():
    pool = KVPool(8, num_layers=3, n_kv_heads=2, head_dim=4, dtype=torch.float32)
    slots = pool.alloc(3)
    rows = torch.randn(3, 2, 3, 2, 4)
    pool.write_rows(slots, rows)
    assert torch.equal(pool.read_rows(slots), rows)
    assert torch.equal(pool.k_buffers[1][slots[2]], rows[1, 0, 2])
    with pytest.raises(ValueError, match="do not fit"):
        pool.write_rows(slots, rows[:2])
