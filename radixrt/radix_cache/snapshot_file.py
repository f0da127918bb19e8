"""The snapshot file: KV rows of token runs plus an index, checked on read, replaced atomically.

    0        header: b"RXKVSNAP", u32 format version, zero padding to 64 bytes
    64       blocks: each `[layers, 2 (K, V), tokens, kv_heads, head_dim]` in the pool's dtype
    index    msgpack `SnapshotIndex`: the key the rows are valid for, each block's offset, token
             count and crc32, and the runs (salt, parent run, token ids, hits, block)
    end      trailer: u64 index offset, u64 index length, u32 index crc32, b"RXKVEND!"

A run continues its parent run (-1: it starts at its salt's root), so the runs form the radix tree.
The writer fills `<name>.tmp-<pid>` and renames it over the snapshot only once everything is on
disk (fsync), so a crash or a full disk leaves the previous snapshot intact. The reader trusts
nothing before the trailer, the index's crc and its bounds check out, and checks a block's crc
before its rows reach a pool. The file is memory-mapped: rows are copied from the page cache
into the pool once, block by block.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, NamedTuple

import msgspec
import torch

from radixrt.radix_cache.pool import KVPool
from radixrt.radix_cache.tier import TierError

FORMAT_VERSION = 1
SUFFIX = ".rxkv"
_HEADER = struct.Struct("<8sI52x")
_TRAILER = struct.Struct("<QQI8s")
_MAGIC, _END = b"RXKVSNAP", b"RXKVEND!"
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.bfloat16, torch.float16, torch.float32)}


class SnapshotError(Exception):
    """The snapshot cannot be used (absent, for another key, truncated or corrupt): start cold."""


class RowLayout(NamedTuple):
    """What one token's KV rows look like; part of a snapshot's key."""

    dtype: str
    num_layers: int
    n_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, pool: KVPool) -> RowLayout:
        return cls(str(pool.dtype).removeprefix("torch."), pool.num_layers, pool.n_kv_heads, pool.head_dim)

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.n_kv_heads * self.head_dim * _DTYPES[self.dtype].itemsize

    def key_fields(self) -> dict[str, str]:
        return {"dtype": self.dtype, "kv_layout": f"layers={self.num_layers} kv_heads={self.n_kv_heads} "
                f"head_dim={self.head_dim} page_size=1 rows=[layer,k|v,token,head,dim]"}  # fmt: skip


class Block(msgspec.Struct, array_like=True):
    offset: int
    tokens: int
    crc32: int


class Run(msgspec.Struct, array_like=True):
    salt: str
    parent: int  # index of the run this one continues; -1: starts at the root of its salt
    ids: list[int]
    hits: int  # the tree node's hit count when saved: loading prefers popular runs
    block: int


class SnapshotIndex(msgspec.Struct):
    key: dict[str, str]
    blocks: list[Block]
    runs: list[Run]


def snapshot_path(cache_dir: str | Path, key: dict[str, str]) -> Path:
    """The file of `key` in `cache_dir`: one snapshot per key, so models can share a directory."""
    digest = hashlib.sha256(msgspec.json.encode(dict(sorted(key.items())))).hexdigest()[:16]
    return Path(cache_dir) / f"radix-{digest}{SUFFIX}"


class SnapshotWriter:
    """Writes one snapshot (a KVTier: `save_rows`); `finish()` commits it, `abort()` drops it.

    `save_rows` copies rows to the host in the caller's thread. With `background=True` a thread
    writes them and then commits, so the caller never waits on the disk: `has_room()` says whether
    `save_rows` can queue another block without blocking, `done` and `error` report the end.
    `opener` opens the temporary file (tests hand in one that fails).
    """

    def __init__(self, path: Path, key: dict[str, str], layout: RowLayout, *, background: bool = False,
                 opener: Callable[[Path], IO[bytes]] = lambda p: open(p, "wb")):  # fmt: skip
        self.path = path
        self.tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        self.layout = layout
        self.error: OSError | None = None
        self.done = threading.Event()
        self.bytes_written = 0
        self._key = key
        self._blocks: list[Block] = []
        self._runs: list[Run] = []
        self._file = opener(self.tmp)
        self._queue: queue.Queue | None = None
        try:
            self._file.write(_HEADER.pack(_MAGIC, FORMAT_VERSION))
        except OSError as exc:
            self._fail(exc)
            raise
        if background:
            self._queue = queue.Queue(maxsize=4)
            threading.Thread(target=self._drain, name="radixrt-cache-save", daemon=True).start()

    def has_room(self) -> bool:
        return self._queue is None or not self._queue.full()

    def save_rows(self, pool: KVPool, slots: torch.Tensor) -> int:
        handle = len(self._blocks)
        self._blocks.append(Block(0, slots.numel(), 0))
        rows = pool.read_rows(slots)
        if self._queue is not None:
            self._queue.put((handle, rows))
        elif self.error is None:
            self._write_block(handle, rows)
        return handle

    def add_run(self, salt: str, parent: int, ids: list[int], hits: int, block: int) -> int:
        """Record that `block` holds the KV of `ids`, continuing run `parent`; returns the run's index."""
        self._runs.append(Run(salt, parent, ids, hits, block))
        return len(self._runs) - 1

    def finish(self) -> None:
        """Commit (in the background thread when there is one: wait on `done`); raises OSError
        in the foreground when the snapshot could not be written (the temp file is removed)."""
        if self._queue is not None:
            self._queue.put(None)
            return
        self._commit()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Drop the snapshot: the temp file is removed, the previous snapshot stays."""
        if self._queue is not None:
            self._queue.put(False)
            self.done.wait()
        else:
            self._fail(OSError("aborted"))

    # ---- writing (the background thread, or the caller's) ----------------------------------

    def _drain(self) -> None:
        assert self._queue is not None
        _lower_this_threads_priority()
        while (item := self._queue.get()) not in (None, False):
            if self.error is None:
                self._write_block(*item)
        if item is None:
            self._commit()
        else:
            self._fail(OSError("aborted"))

    def _write_block(self, handle: int, rows: torch.Tensor) -> None:
        data = rows.contiguous().view(torch.uint8).numpy()
        try:
            offset = self._file.tell()
            self._file.write(data)
        except OSError as exc:
            self._fail(exc)
            return
        self._blocks[handle] = Block(offset, self._blocks[handle].tokens, zlib.crc32(data))
        self.bytes_written += data.nbytes

    def _commit(self) -> None:
        if self.error is not None:
            return
        key = {**self._key, **self.layout.key_fields()}
        index = msgspec.msgpack.encode(SnapshotIndex(key, self._blocks, self._runs))
        try:
            offset = self._file.tell()
            self._file.write(index)
            self._file.write(_TRAILER.pack(offset, len(index), zlib.crc32(index), _END))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            self._fail(exc)
            return
        self.done.set()

    def _fail(self, exc: OSError) -> None:
        self.error = self.error or exc
        try:
            self._file.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)
        self.done.set()


class SnapshotReader:
    """A snapshot opened for loading (a KVTier: `load_rows`); raises SnapshotError on open."""

    def __init__(self, path: Path, key: dict[str, str], layout: RowLayout):
        self.path = path
        self.layout = layout
        try:
            with open(path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
            raise SnapshotError(f"cannot map {path}: {exc}") from None
        try:
            self.index = self._read_index()
            expected = {**key, **layout.key_fields()}
            if self.index.key != expected:
                raise SnapshotError(f"{path} was saved for another key: {describe_mismatch(self.index.key, expected)}")
            self._check_bounds(self.index, self._rows_end)
        except SnapshotError:
            self.close()
            raise

    @property
    def runs(self) -> list[Run]:
        return self.index.runs

    def load_rows(self, handle: int, pool: KVPool, slots: torch.Tensor) -> None:
        block = self.index.blocks[handle]
        nbytes = block.tokens * self.layout.bytes_per_token
        view = memoryview(self._mm)[block.offset : block.offset + nbytes]
        if zlib.crc32(view) != block.crc32:
            raise TierError(f"{self.path}: block {handle} fails its checksum")
        L, H, D = self.layout.num_layers, self.layout.n_kv_heads, self.layout.head_dim
        rows = torch.frombuffer(view, dtype=_DTYPES[self.layout.dtype]).view(L, 2, block.tokens, H, D)
        pool.write_rows(slots, rows[:, :, : slots.numel()])
        del rows
        view.release()

    def close(self) -> None:
        try:
            self._mm.close()
        except BufferError:  # a row view is still alive somewhere; the mapping goes with it
            pass

    def _read_index(self) -> SnapshotIndex:
        mm, size = self._mm, len(self._mm)
        if size < _HEADER.size + _TRAILER.size or _HEADER.unpack_from(mm, 0) != (_MAGIC, FORMAT_VERSION):
            raise SnapshotError(f"{self.path} is not a radixrt snapshot of format {FORMAT_VERSION}")
        offset, length, crc, end = _TRAILER.unpack_from(mm, size - _TRAILER.size)
        if end != _END or offset + length != size - _TRAILER.size or offset < _HEADER.size:
            raise SnapshotError(f"{self.path} is truncated (no valid trailer)")
        raw = mm[offset : offset + length]
        if zlib.crc32(raw) != crc:
            raise SnapshotError(f"{self.path}: the index fails its checksum")
        try:
            index = msgspec.msgpack.decode(raw, type=SnapshotIndex)
        except msgspec.MsgspecError as exc:
            raise SnapshotError(f"{self.path}: unreadable index ({exc})") from None
        self._rows_end = offset
        return index

    def _check_bounds(self, index: SnapshotIndex, rows_end: int) -> None:
        per_token = self.layout.bytes_per_token
        for i, b in enumerate(index.blocks):
            if b.tokens < 1 or b.offset < _HEADER.size or b.offset + b.tokens * per_token > rows_end:
                raise SnapshotError(f"{self.path}: block {i} lies outside the rows")
        for i, r in enumerate(index.runs):
            if not -1 <= r.parent < i or not 0 <= r.block < len(index.blocks):
                raise SnapshotError(f"{self.path}: run {i} links to run {r.parent} / block {r.block}")
            if len(r.ids) != index.blocks[r.block].tokens:
                raise SnapshotError(
                    f"{self.path}: run {i} has {len(r.ids)} ids for {index.blocks[r.block].tokens} rows"
                )


def describe_mismatch(saved: dict[str, str], expected: dict[str, str]) -> str:
    """Which key fields differ, e.g. "weights: 1a2b.. != 3c4d..; dtype: float32 != bfloat16"."""
    names = sorted(set(saved) | set(expected))
    diffs = [f"{n}: {saved.get(n)!r} != {expected.get(n)!r}" for n in names if saved.get(n) != expected.get(n)]
    return "; ".join(diffs) or "none"


def read_key(path: Path) -> dict[str, str] | None:
    """The key a snapshot was saved for, or None when it is unreadable (for warnings only)."""
    try:
        with open(path, "rb") as f:
            f.seek(-_TRAILER.size, os.SEEK_END)
            offset, length, _, end = _TRAILER.unpack(f.read(_TRAILER.size))
            f.seek(offset)
            return msgspec.msgpack.decode(f.read(length), type=SnapshotIndex).key if end == _END else None
    except (OSError, ValueError, struct.error, msgspec.MsgspecError):
        return None


def _lower_this_threads_priority() -> None:
    """Nice 19 for the calling thread only (Linux: a thread is a task): on a busy CPU the model's
    OpenMP threads get the cores first, and a parallel op never waits on a preempted worker
    because the writer took its core."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
