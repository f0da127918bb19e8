"""`radixrt serve` at its limits: every violation is a 4xx naming the field, overload is 503
with Retry-After, one ZMQ connection cannot take more than its share.

Runs on the tiny random llama (fast decode).
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from radixrt.runtime import protocol
from radixrt.runtime.protocol import ErrorReply, GenerateResult
from tests.runtime.server_harness import (
    ZmqClient,
    http_client,
    start_server,
    stats,
    wait_until,
    zmq_generate,
)

pytestmark = pytest.mark.slow

LIMITS = {
    "max_running_requests": 2,
    "max_queued_requests": 2,
    "max_prompts_per_request": 4,
    "max_requests_per_connection": 2,
    "max_grammar_bytes": 1000,
    "max_body_bytes": 64 << 10,
    "max_new_tokens_limit": 4000,
    "client_timeout": 2.0,
}
LONG = {"temperature": 0, "max_new_tokens": 4000, "ignore_eos": True}  # seconds on the long-context tiny model


@pytest.fixture(scope="module")
def limited(long_tiny_model_dir):
    handle = start_server(model=str(long_tiny_model_dir), **LIMITS)
    yield handle
    handle.shutdown()


@pytest.fixture(scope="module")
def http(limited):
    with http_client(limited) as client:
        yield client


def generate(http, text: Any = "Hello", **fields: Any):
    return http.post("/generate", json={"text": text, **fields})


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"text": ["a"] * 5}, "text", "5 prompts"),
        ({"input_ids": [5] * 8200}, "text", "8200 tokens; the context length is 8192"),
        ({"text": "hi", "sampling_params": {"max_new_tokens": 4001}}, "max_new_tokens", "limit 4000"),
        ({"text": "hi", "sampling_params": {"n": 129}}, "n", "n=129"),
        ({"text": "hi", "sampling_params": {"n": 5}}, "n", "at most 4 at once"),
        ({"text": "hi", "sampling_params": {"regex": "a" * 1001}}, "regex", "1001 bytes"),
    ],
)
def test_each_limit_is_a_400_naming_the_field(http, body, param, words):
    answer = http.post("/generate", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and words in error["message"]


def test_a_body_over_the_limit_is_413_and_a_frame_over_it_drops_only_that_connection(limited, http):
    assert http.post("/generate", content=b"x" * (65 << 10)).status_code == 413
    big = ZmqClient(limited.zmq_address)
    big.send(zmq_generate("big", "x" * (70 << 10)))
    other = ZmqClient(limited.zmq_address)
    other.send(zmq_generate("ok", "Hello"))
    assert isinstance(other.until_end("ok")[-1], GenerateResult)
    assert not big.sock.poll(500)
    big.close()
    other.close()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_an_openai_body_over_the_limit_is_413_exactly_like_generate(http, path):
    too_big = b"x" * (65 << 10)  # over the server's --max-body-bytes (64 KiB), under the 8 MiB default
    native, openai = http.post("/generate", content=too_big), http.post(path, content=too_big)
    assert openai.status_code == native.status_code == 413
    assert openai.json() == native.json()
    assert "exceeds 65536 bytes" in openai.json()["error"]["message"]


def test_a_body_that_never_finishes_arriving_gets_408(limited):
    with socket.create_connection(("127.0.0.1", limited.args.port)) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        sock.settimeout(30)
        assert sock.recv(100).startswith(b"HTTP/1.1 408")


def drain_until_ended(client: ZmqClient, rids: set[str]) -> dict[str, Any]:
    """Read (interleaved) messages until each of `rids` has its final one; those final messages."""
    ends: dict[str, Any] = {}
    while rids - set(ends):
        msg = client.recv()
        if isinstance(msg, (GenerateResult, ErrorReply)):
            ends[msg.rid] = msg
    return ends


def hold(http, client: ZmqClient, rids: list[str]) -> None:
    """Start long requests one at a time (the worker checks its own queue per arrival batch)."""
    for rid in rids:
        expected = stats(http)["requests_in_flight"] + 1
        client.send(zmq_generate(rid, "Hello", stream=True, **LONG))
        wait_until(lambda n=expected: (s := stats(http))["running"] + s["waiting"] == n == s["requests_in_flight"])


def release(client: ZmqClient, rids: list[str]) -> None:
    for rid in rids:
        client.send(protocol.AbortRequest(rid=rid))
    assert all(isinstance(m, GenerateResult) for m in drain_until_ended(client, set(rids)).values())


def test_beyond_the_queue_limit_requests_get_503_with_retry_after(limited, http):
    a, b, c = (ZmqClient(limited.zmq_address) for _ in range(3))
    hold(http, a, ["h0", "h1"])
    hold(http, b, ["h0", "h1"])
    busy = generate(http, sampling_params={"max_new_tokens": 1})
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert "4 requests are in flight" in busy.json()["error"]["message"]
    c.send(zmq_generate("more", "Hello"))
    assert c.recv().status == 503
    release(a, ["h0", "h1"])
    release(b, ["h0", "h1"])
    assert generate(http, sampling_params={"max_new_tokens": 1}).status_code == 200
    for client in (a, b, c):
        client.close()


def test_one_zmq_connection_may_run_only_so_many_requests(limited, http):
    client, other = ZmqClient(limited.zmq_address), ZmqClient(limited.zmq_address)
    hold(http, client, ["r0", "r1"])
    client.send(zmq_generate("r2", "Hello"))
    assert drain_until_ended(client, {"r2"})["r2"].status == 429
    other.send(zmq_generate("o", "Hello"))  # another connection is not limited by this one
    wait_until(lambda: stats(http)["requests_in_flight"] == 3)
    release(client, ["r0", "r1"])
    assert isinstance(other.until_end("o")[-1], GenerateResult)
    client.send(zmq_generate("r3", "Hello"))
    assert isinstance(drain_until_ended(client, {"r3"})["r3"], GenerateResult)
    client.close()
    other.close()
