"""Helpers for end-to-end tests against a real `radixrt serve` subprocess."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import zmq

from radixrt.runtime import protocol
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.protocol import ErrorReply, GenerateRequest, GenerateResult, SamplingParams
from radixrt.runtime.server.launcher import ServerHandle, launch_server

# float32 keeps greedy outputs identical to radixrt.Engine's; small pools keep it light
SERVER_DEFAULTS: dict[str, Any] = {
    "model": "default",
    "dtype": "float32",
    "kv_slots": 4096,
    "max_running_requests": 8,
    "port": 0,
    "log_level": "warning",
}


def start_server(popen_kwargs: dict[str, Any] | None = None, **overrides: Any) -> ServerHandle:
    """`radixrt serve --model default` with SERVER_DEFAULTS and `overrides`, once it is healthy."""
    args = ServerArgs.from_kwargs(**{**SERVER_DEFAULTS, **overrides})
    return launch_server(args, timeout=300, **(popen_kwargs or {}))


def sse_events(response: httpx.Response) -> list[Any]:
    """The JSON payloads of a /generate stream, up to (not including) `data: [DONE]`."""
    events = []
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return events
        events.append(json.loads(data))
    raise AssertionError(f"the stream ended without [DONE] after {len(events)} events")


def http_client(server: ServerHandle, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=kw.pop("timeout", 120), trust_env=False, **kw)


def stats(http: httpx.Client) -> dict[str, Any]:
    answer = http.get("/stats")
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def books_balance(s: dict[str, Any]) -> bool:
    """Nothing running holds KV and every slot is free or cached."""
    return s["kv_slots_in_use"] == 0 and s["kv_slots_free"] + s["kv_slots_cached"] == s["kv_slots_total"]


def idle(http: httpx.Client) -> bool:
    s = stats(http)
    return s["running"] == 0 and s["waiting"] == 0 and s["requests_in_flight"] == 0 and books_balance(s)


class ZmqClient:
    """A DEALER connection to the server's ROUTER socket (one namespace of rids)."""

    def __init__(self, address: str):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.decoder = protocol.decoder(protocol.ServerMsg)

    def send(self, msg: Any) -> None:
        self.sock.send(protocol.encoder().encode(msg))

    def recv(self, timeout: float = 60) -> Any:
        assert self.sock.poll(int(timeout * 1000)), "no answer from the server"
        return self.decoder.decode(self.sock.recv())

    def until_end(self, rid: str) -> list[Any]:
        """Messages for `rid` up to its GenerateResult or ErrorReply."""
        msgs = []
        while not msgs or not isinstance(msgs[-1], (GenerateResult, ErrorReply)):
            msg = self.recv()
            assert msg.rid == rid, f"got a message for {msg.rid!r} while waiting for {rid!r}"
            msgs.append(msg)
        return msgs

    def close(self) -> None:
        self.sock.close()


def zmq_generate(
    rid: str, text: str, stream: bool = False, api_key: str | None = None, **sampling: Any
) -> GenerateRequest:
    params = SamplingParams(**{"temperature": 0, "max_new_tokens": 8, **sampling})
    return GenerateRequest(rid=rid, text=text, sampling=params, stream=stream, api_key=api_key)
