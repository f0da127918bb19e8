"""`--cache-dir`: the radix cache loaded at start, saved on shutdown and every `--cache-save-interval`.

A snapshot is valid for one key: the weights' fingerprint (sha256 of every tensor as loaded),
quantization, radixrt's version, and the KV rows' dtype and layout. At start the snapshot of this
key is memory-mapped and loaded into the pool and tree before the worker reports ready, so the
first request is already a hit. Anything wrong (another key, a truncated or corrupt file, a
failed checksum) is a warning and a cold start; a failed save (disk full) is a warning, its
partial file is removed, and serving goes on.

A periodic save never stops decoding for long: the scheduler thread copies at most
SAVE_STEP_BYTES of rows per loop iteration (`SaveJob.advance`), and a background thread writes
and commits them. Nodes evicted before their turn are left out, so a snapshot is the tree as it
was when the save began, minus what was evicted meanwhile.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from radixrt.radix_cache.snapshot import SaveJob
from radixrt.radix_cache.snapshot_file import (
    SUFFIX,
    RowLayout,
    SnapshotError,
    SnapshotReader,
    SnapshotWriter,
    describe_mismatch,
    read_key,
    snapshot_path,
)
from radixrt.radix_cache.tier import TierError
from radixrt.runtime.scheduler.cache_manager import CacheManager

log = logging.getLogger("radixrt.cache_persistence")

SAVE_STEP_BYTES = 8 << 20  # rows the scheduler thread copies per loop iteration during a periodic save
SAVE_POLL_S = 0.005  # how long an idle loop waits for messages while a save is in progress


class CachePersistence:
    """Owned by the scheduler loop: `load()` once, `poll()` every iteration, `save_now()` at exit.

    `opener` opens a snapshot's temporary file (tests hand in one whose writes fail).
    """

    def __init__(self, cache: CacheManager, cache_dir: str, key: dict[str, str], interval_s: float):
        self.cache = cache
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.layout = RowLayout.of(cache.pool)
        self.path = snapshot_path(self.dir, {**key, **self.layout.key_fields()})
        self.interval_s = interval_s
        self.piece_tokens = max(1, SAVE_STEP_BYTES // self.layout.bytes_per_token)
        self.opener: Callable[[Path], IO[bytes]] = lambda p: open(p, "wb")
        self.counters: dict[str, Any] = {"cache_loaded_tokens": 0, "cache_load_s": 0.0, "cache_saves": 0, "cache_save_failures": 0,
                                         "cache_save_max_step_ms": 0.0}  # fmt: skip
        self._job: SaveJob | None = None
        self._job_started = 0.0
        self._job_changes = 0  # tree_changes when the save in progress began
        self._last_save = time.monotonic()
        self._saved_changes = cache.tree_changes

    # ---- start -------------------------------------------------------------------------

    def load(self) -> None:
        """Fill the empty tree from this key's snapshot, if there is a good one."""
        self._remove_stale_temp_files()
        if not self.path.exists():
            self._warn_other_keys()
            return
        start = time.perf_counter()
        try:
            reader = SnapshotReader(self.path, self.key, self.layout)
        except SnapshotError as exc:
            log.warning("cache snapshot not used, starting cold: %s", exc)
            return
        try:
            result = self.cache.restore(reader)
        except TierError as exc:
            log.warning("cache snapshot not used, starting cold: %s", exc)
            return
        finally:
            reader.close()
        elapsed = time.perf_counter() - start
        self.counters.update(cache_loaded_tokens=result.tokens, cache_load_s=round(elapsed, 4))
        self._saved_changes = self.cache.tree_changes
        skipped = f"; {result.skipped_tokens} tokens did not fit" if result.skipped_tokens else ""
        log.info("cache loaded from %s: %d tokens in %d runs, %.2fs (memory-mapped)%s", self.path, result.tokens,
                 result.runs, elapsed, skipped)  # fmt: skip

    def _warn_other_keys(self) -> None:
        expected = {**self.key, **self.layout.key_fields()}
        for other in sorted(self.dir.glob(f"radix-*{SUFFIX}")):
            saved = read_key(other)
            why = "unreadable" if saved is None else describe_mismatch(saved, expected)
            log.warning("cache snapshot %s is for another model or layout (%s): starting cold", other.name, why)

    def _remove_stale_temp_files(self) -> None:
        for tmp in self.dir.glob(f"{self.path.name}.tmp-*"):
            pid = tmp.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or not _alive(int(pid)):
                tmp.unlink(missing_ok=True)

    # ---- periodic saves ----------------------------------------------------------------

    def wait_hint(self) -> float | None:
        """How long an idle loop may wait for messages before `poll()` has work (None: forever)."""
        if self._job is not None:
            return SAVE_POLL_S
        if self.interval_s > 0 and self.cache.tree_changes != self._saved_changes:
            return max(0.0, self._last_save + self.interval_s - time.monotonic())
        return None

    def poll(self) -> None:
        """Start a due save, copy its next rows, or finish it; never waits on the disk."""
        job = self._job
        if job is None:
            due = self.interval_s > 0 and time.monotonic() - self._last_save >= self.interval_s
            if due and self.cache.tree_changes != self._saved_changes:
                self._start(background=True)
            return
        if job.writer.error is not None:
            self._end(job)
        elif not job.finished:
            start = time.perf_counter()
            job.advance(self.piece_tokens)
            step_ms = (time.perf_counter() - start) * 1e3
            self.counters["cache_save_max_step_ms"] = max(self.counters["cache_save_max_step_ms"], step_ms)
            if job.finished:
                job.writer.finish()
        elif job.writer.done.is_set():
            self._end(job)

    def save_now(self) -> None:
        """Save the whole tree in this thread (shutdown); a save in progress is dropped first."""
        if self._job is not None:
            self._job.writer.abort()
            self._job = None
        if self.cache.tree_changes == self._saved_changes:
            log.info("cache unchanged since it was loaded or saved; %s kept", self.path)
            return
        job = self._start(background=False)
        if job is not None:
            job.advance(None)
            try:
                job.writer.finish()
            except OSError:
                pass  # reported by _end
            self._end(job)

    def _start(self, background: bool) -> SaveJob | None:
        self._job_started = time.perf_counter()
        self._last_save = time.monotonic()
        changes = self.cache.tree_changes
        try:
            writer = SnapshotWriter(self.path, self.key, self.layout, background=background, opener=self.opener)
        except OSError as exc:
            self.counters["cache_save_failures"] += 1
            log.warning("cache save failed, serving goes on: %s", exc)
            return None
        self._job = self.cache.save_job(writer, self.piece_tokens)
        self._job_changes = changes
        return self._job

    def _end(self, job: SaveJob) -> None:
        self._job = None
        writer = job.writer
        if writer.error is not None:
            writer.abort()
            self.counters["cache_save_failures"] += 1
            log.warning("cache save failed (partial file removed), serving goes on: %s", writer.error)
            return
        self.counters["cache_saves"] += 1
        self._saved_changes = self._job_changes
        dropped = f", {job.dropped_tokens} evicted before they were copied" if job.dropped_tokens else ""
        log.info("cache saved to %s: %d tokens (%.1f MB) in %.2fs%s", self.path, job.saved_tokens,
                 writer.bytes_written / 1e6, time.perf_counter() - self._job_started, dropped)  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
