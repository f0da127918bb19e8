from __future__ import annotations

import pytest

from radixrt.lang.backends.runtime_endpoint import RuntimeEndpoint

from .fake_server import FakeServer


@pytest.fixture
def server():
    with FakeServer() as s:
        yield s


@pytest.fixture
def backend(server):
    endpoint = RuntimeEndpoint(server.address, timeout=10)
    yield endpoint
    endpoint.shutdown()
