"""The native routes' HTTP rules on the ASGI app over a fake Frontend (no worker, no sockets):
`/flush_cache` takes POST only, `/debug/cache` is served to loopback clients unless an API key
guards it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from radixrt.runtime import protocol
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.http.app import create_app
from tests.runtime.http.fake_frontend import FakeFrontend

SECRET = "alice private prompt"
TREE = {
    "nodes": [
        {"parent": -1, "depth": 0, "tokens": 0, "text": "<root>", "hits": 0, "lock": 0},
        {"parent": 0, "depth": 1, "tokens": 5, "text": SECRET, "hits": 1, "lock": 0},
    ],
    "total_nodes": 1,
    "total_tokens": 5,
    "truncated": False,
}


def client_of(frontend: FakeFrontend, host: str, api_key: str | None = None) -> TestClient:
    return TestClient(create_app(frontend, ServerArgs(api_key=api_key)), client=(host, 40000))


def test_flush_cache_takes_post_and_a_get_is_405_that_flushes_nothing():
    frontend = FakeFrontend(TREE)
    http = client_of(frontend, "127.0.0.1")
    assert http.get("/flush_cache").status_code == 405
    assert frontend.sent == []
    answer = http.post("/flush_cache")
    assert answer.status_code == 200 and answer.json() == {"flushed": True}
    assert [type(m) for m in frontend.sent] == [protocol.FlushCache]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_debug_cache_without_an_api_key_is_served_to_loopback_clients(host):
    answer = client_of(FakeFrontend(TREE), host).get("/debug/cache")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("image/svg+xml") and SECRET in answer.text


@pytest.mark.parametrize("host", ["10.0.0.5", "192.168.1.20", "2001:db8::1", "::ffff:10.0.0.5", "testclient"])
def test_debug_cache_without_an_api_key_is_403_for_other_clients_and_asks_the_worker_nothing(host):
    frontend = FakeFrontend(TREE)
    answer = client_of(frontend, host).get("/debug/cache")
    assert answer.status_code == 403
    error = answer.json()["error"]
    assert error["type"] == "permission_error" and error["code"] == 403
    assert "loopback" in error["message"] and "--api-key" in error["message"]
    assert SECRET not in answer.text and frontend.sent == [] and frontend.metrics.errors == [403]


def test_with_an_api_key_the_key_guards_debug_cache_from_any_host():
    remote = client_of(FakeFrontend(TREE), "10.0.0.5", api_key="k")
    assert remote.get("/debug/cache").status_code == 401
    answer = remote.get("/debug/cache", headers={"Authorization": "Bearer k"})
    assert answer.status_code == 200 and "image/svg+xml" in answer.headers["content-type"]
