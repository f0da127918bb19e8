"""--cache-dir through radixrt.Engine on a tiny random llama: restarts keep their hits, damage and a
full disk start cold or fail the save without harming serving, periodic saves leave requests alone."""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

import pytest

import radixrt
from radixrt.radix_cache.snapshot_file import SUFFIX
from tests.runtime.server_harness import http_client, start_server, stats, wait_until

SYSTEM = list(range(1000, 1300))  # a 300-token shared prefix
ASK_A, ASK_B = SYSTEM + [11, 12, 13], SYSTEM + [21, 22, 23, 24]
GREEDY = {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True}


def balanced(stats: dict) -> bool:
    return stats["kv_slots_free"] + stats["kv_slots_cached"] + stats["kv_slots_in_use"] == stats["kv_slots_total"]


def snapshots(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob(f"*{SUFFIX}*"))


@pytest.fixture(scope="module")
def saved(tiny_model_dir, tmp_path_factory):
    """A cache dir saved by an engine that served ASK_A, and ASK_B's cold greedy output."""
    cache_dir = tmp_path_factory.mktemp("cache")
    with radixrt.Engine(model=str(tiny_model_dir), kv_slots=2048, cache_dir=str(cache_dir)) as engine:
        cold_b = engine.generate(input_ids=ASK_B, sampling_params=GREEDY)
        assert engine.flush_cache()
        engine.generate(input_ids=ASK_A, sampling_params=GREEDY)
    assert len(snapshots(cache_dir)) == 1
    return cache_dir, cold_b


def copy_of(saved_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved_dir, tmp_path / "cache"))


def test_a_restart_hits_the_saved_prefix_with_the_cold_greedy_output(saved, tiny_model_dir, tmp_path):
    cache_dir, cold_b = saved
    with radixrt.Engine(
        model=str(tiny_model_dir), kv_slots=2048, cache_dir=str(copy_of(cache_dir, tmp_path))
    ) as engine:
        stats = engine.stats()
        assert stats["cache_loaded_tokens"] == len(ASK_A) + GREEDY["max_new_tokens"] - 1  # the last token has no KV
        warm_b = engine.generate(input_ids=ASK_B, sampling_params=GREEDY)
        assert warm_b["meta_info"]["cached_tokens"] == len(SYSTEM)
        assert warm_b["output_ids"] == cold_b["output_ids"]
        again_a = engine.generate(input_ids=ASK_A, sampling_params=GREEDY)
        assert again_a["meta_info"]["cached_tokens"] == len(ASK_A) - 1
        assert balanced(engine.stats())


def test_another_dtype_starts_cold_with_a_warning(saved, tiny_model_dir, tmp_path, caplog):
    cache_dir, _ = saved
    with caplog.at_level(logging.WARNING, logger="radixrt.cache_persistence"):
        engine = radixrt.Engine(model=str(tiny_model_dir), kv_slots=2048, dtype="float32",
                                cache_dir=str(copy_of(cache_dir, tmp_path)))  # fmt: skip
    with engine:
        assert "for another model or layout" in caplog.text and "dtype" in caplog.text
        assert engine.stats()["cache_loaded_tokens"] == 0
        out = engine.generate(input_ids=ASK_B, sampling_params=GREEDY)
        assert out["meta_info"]["cached_tokens"] == 0


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_snapshot_starts_cold_with_a_warning(saved, tiny_model_dir, tmp_path, caplog, damage):
    cache_dir, cold_b = saved
    mine = copy_of(cache_dir, tmp_path)
    (path,) = snapshots(mine)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) - 100]
    else:
        data[64 + 1000] ^= 0x40  # a bit of the rows: only their checksum can tell
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="radixrt.cache_persistence"):
        engine = radixrt.Engine(model=str(tiny_model_dir), kv_slots=2048, cache_dir=str(mine))
    with engine:
        assert "starting cold" in caplog.text
        stats = engine.stats()
        assert stats["cache_loaded_tokens"] == 0 and stats["kv_slots_cached"] == 0
        out = engine.generate(input_ids=ASK_B, sampling_params=GREEDY)
        assert out["meta_info"]["cached_tokens"] == 0 and out["output_ids"] == cold_b["output_ids"]


def test_a_pool_smaller_than_the_snapshot_loads_what_fits(saved, tiny_model_dir, tmp_path):
    cache_dir, cold_b = saved
    with radixrt.Engine(model=str(tiny_model_dir), kv_slots=200, cache_dir=str(copy_of(cache_dir, tmp_path))) as engine:
        stats = engine.stats()
        assert stats["cache_loaded_tokens"] == 200 and stats["kv_slots_free"] == 0 and balanced(stats)
        # the first 200 system tokens are cached; the request evicts what it must to run
        out = engine.generate(input_ids=SYSTEM[:150] + [5, 6], sampling_params={**GREEDY, "max_new_tokens": 4})
        assert out["meta_info"]["cached_tokens"] == 150
        assert balanced(engine.stats())


class _FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are taken."""

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


def test_periodic_saves_survive_a_full_disk_and_leave_running_requests_alone(long_tiny_model_dir, tmp_path):
    cache_dir = tmp_path / "cache"
    long = {"temperature": 0, "max_new_tokens": 300, "ignore_eos": True}
    prompt = list(range(2000, 2300))
    with radixrt.Engine(model=str(long_tiny_model_dir), kv_slots=4096, cache_dir=str(cache_dir),
                        cache_save_interval=0.05) as engine:  # fmt: skip
        wait_until(lambda: engine.scheduler is not None)  # set on the engine's thread
        persistence = engine.scheduler.persistence
        persistence.piece_tokens = 16  # many scheduler steps per save
        persistence.opener = lambda p: _FullDisk(p, room=10_000)
        engine.generate(input_ids=SYSTEM, sampling_params=GREEDY)
        wait_until(lambda: engine.stats()["cache_save_failures"] >= 1, timeout=30)
        persistence.interval_s = 0  # no new tries; the one in flight (if any) fails too
        wait_until(lambda: snapshots(cache_dir) == [], timeout=30)  # partial files are removed
        assert balanced(engine.stats())

        persistence.opener = lambda p: open(p, "wb")
        persistence.interval_s = 0.05
        during = engine.generate(input_ids=prompt, sampling_params=long)  # saves run while it decodes
        wait_until(lambda: engine.stats()["cache_saves"] >= 1, timeout=30)
        stats = engine.stats()
        assert stats["cache_save_max_step_ms"] > 0 and balanced(stats)
        assert engine.flush_cache()
        alone = engine.generate(input_ids=prompt, sampling_params=long)
        assert during["output_ids"] == alone["output_ids"]
    (path,) = snapshots(cache_dir)
    with radixrt.Engine(model=str(long_tiny_model_dir), kv_slots=4096, cache_dir=str(cache_dir)) as engine:
        assert engine.stats()["cache_loaded_tokens"] >= len(prompt)  # the shutdown save after the flush
        out = engine.generate(input_ids=prompt, sampling_params=long)
        assert out["output_ids"] == alone["output_ids"]
        assert out["meta_info"]["cached_tokens"] == len(prompt) - 1


def test_radixrt_serve_saves_on_sigterm_and_the_next_server_hits(tiny_model_dir, tmp_path):
    body = {"input_ids": ASK_B, "sampling_params": GREEDY}
    with start_server(model=str(tiny_model_dir), kv_slots=2048, cache_dir=str(tmp_path)) as server:
        with http_client(server) as http:
            cold = http.post("/generate", json=body).json()
        assert server.shutdown(timeout=60) == 0  # SIGTERM: drain, save, exit
    assert len(snapshots(tmp_path)) == 1
    with start_server(model=str(tiny_model_dir), kv_slots=2048, cache_dir=str(tmp_path)) as server:
        with http_client(server) as http:
            assert stats(http)["cache_loaded_tokens"] == len(ASK_B) + GREEDY["max_new_tokens"] - 1
            warm = http.post("/generate", json=body).json()
    assert warm["meta_info"]["cached_tokens"] == len(ASK_B) - 1
    assert warm["output_ids"] == cold["output_ids"]
