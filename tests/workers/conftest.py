"""Fixtures of the worker tests."""

from __future__ import annotations

import pytest

from radixrt.workers.layers import attention_tuning, kernel_tuning


class _Unknown:
    """An OtherLoad that read nothing: timings are cached whatever else the machine is doing."""

    reading = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@pytest.fixture
def quiet_cpus(monkeypatch):
    """For tests of the kernel-timing cache: a busy test machine must not keep them from caching."""
    monkeypatch.setattr(kernel_tuning, "OtherLoad", _Unknown)
    monkeypatch.setattr(attention_tuning, "OtherLoad", _Unknown)
