"""A real `radixrt serve` subprocess on free ports, started once per test module."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from radixrt.runtime.server.launcher import ServerHandle
from tests.runtime.server_harness import start_server


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_server()
    yield handle
    handle.shutdown()


@pytest.fixture(scope="module")
def http(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as client:
        yield client
