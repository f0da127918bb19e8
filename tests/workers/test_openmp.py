"""release_thread_pool() ends the calling thread's OpenMP worker threads (radixrt.Engine calls it
so that the caller's pool does not slow the engine thread's ops)."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from radixrt.workers import openmp

pytestmark = pytest.mark.skipif(
    openmp._libgomp() is None or torch.get_num_threads() < 2 or not os.path.isdir("/proc/self/task"),
    reason="needs torch on libgomp with 2+ threads, on Linux",
)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _threads_after(expected: int) -> int:
    deadline = time.monotonic() + 5  # the pool's threads exit just after the call returns
    while _threads() != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return _threads()


def test_release_ends_the_calling_threads_pool_and_ops_still_run():
    seen: dict[str, object] = {}

    def run() -> None:
        x = torch.randn(1 << 20)
        seen["sum"] = (x + x).sum().item()  # a parallel region: this thread gets a pool
        with_pool = _threads()
        seen["released"] = openmp.release_thread_pool()
        seen["without_pool"] = _threads_after(with_pool - (torch.get_num_threads() - 1))
        seen["expected"] = with_pool - (torch.get_num_threads() - 1)
        seen["sum_again"] = (x + x).sum().item()  # a new pool

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert seen["released"] is True
    assert seen["without_pool"] == seen["expected"]
    assert seen["sum_again"] == seen["sum"]


def test_release_without_a_pool_is_harmless():
    seen = {}
    worker = threading.Thread(target=lambda: seen.setdefault("released", openmp.release_thread_pool()))
    worker.start()
    worker.join()
    assert seen["released"] is True
