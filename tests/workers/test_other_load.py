"""Kernel timings taken while other processes took the CPUs are used for their start only, never
cached (layers/other_load.py): the meter sees other processes' load and not this process's own."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch

from radixrt.workers.layers import cpu_kernels, kernel_tuning, linear_candidates, other_load
from radixrt.workers.layers.other_load import LoadReading, OtherLoad

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat (Linux)")
CPUS = len(os.sched_getaffinity(0))


def _spin(seconds: float) -> None:
    x = torch.randn(256, 256)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        x = torch.tanh(x @ x)


def test_other_processes_spinning_on_our_cpus_disturb_the_timings():
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * CPUS)]
    try:
        time.sleep(0.3)  # the hogs are running
        with OtherLoad() as load:
            _spin(1.0)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert load.reading is not None and load.reading.disturbed, load.reading
    assert load.reading.share > 0.4  # two spinning processes a CPU leave us at most a third of it


def test_this_processs_own_work_is_not_other_load():
    with OtherLoad() as load:
        _spin(1.0)
    assert load.reading is not None and load.reading.wall_s >= 1.0
    # NOTE: a machine running other work meanwhile would raise this share; our own threads never do
    assert load.reading.share < 0.5, load.reading


@pytest.mark.parametrize(("others_s", "wall_s", "disturbed"), [(0.04, 0.1, False), (0.5, 1.0, True), (0.3, 1.0, False)])
def test_disturbed_needs_a_share_above_the_bound_and_more_than_rounding(others_s, wall_s, disturbed):
    assert LoadReading(wall_s=wall_s, cpus=2, others_s=others_s).disturbed is disturbed


class _Busy:
    reading = LoadReading(wall_s=1.0, cpus=2, others_s=1.5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_disturbed_timings_serve_the_start_but_are_not_cached(tmp_path, monkeypatch, caplog):
    cpu_kernels.load()  # compiled and loaded from the real cache before the timings' cache moves
    monkeypatch.setenv("RADIXRT_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(kernel_tuning, "OtherLoad", _Busy)
    monkeypatch.setattr(kernel_tuning, "_warned", set())
    w = torch.randn(32, 16, dtype=torch.float32)
    names = linear_candidates.available(torch.float32)
    with caplog.at_level(logging.WARNING, logger=kernel_tuning.__name__):
        measured = kernel_tuning.cached_measure([(w, None)], names)
        kernel_tuning.cached_measure([(w, None)], names)  # measured again, and warned once
    assert set(measured.seconds) == set(names) and all(measured.seconds[c] for c in names)
    assert not kernel_tuning.cache_file().exists()
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "75% of this process's CPUs" in caplog.records[0].message and "not cached" in caplog.records[0].message

    monkeypatch.setattr(kernel_tuning, "OtherLoad", other_load.OtherLoad)  # a real meter on a quiet start
    monkeypatch.setattr(other_load.LoadReading, "disturbed", property(lambda self: False))
    kernel_tuning.cached_measure([(w, None)], names)
    cached = json.loads(kernel_tuning.cache_file().read_text())[kernel_tuning.machine_key()]
    assert kernel_tuning.shape_key(32, 16, torch.float32, False) in cached
