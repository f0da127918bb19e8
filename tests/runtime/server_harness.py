"""Helpers for end-to-end tests against a real `radixrt serve` subprocess."""

from __future__ import annotations

import json
from typing import Any

import httpx

from radixrt.runtime.config import ServerArgs
from radixrt.runtime.launcher import ServerHandle, launch_server

# float32 keeps greedy outputs identical to radixrt.Engine's; small pools keep it light
SERVER_DEFAULTS: dict[str, Any] = {
    "model": "default",
    "dtype": "float32",
    "kv_slots": 4096,
    "max_running_requests": 8,
    "port": 0,
    "log_level": "warning",
}


def start_server(**overrides: Any) -> ServerHandle:
    """`radixrt serve --model default` with SERVER_DEFAULTS and `overrides`, once it is healthy."""
    return launch_server(ServerArgs.from_kwargs(**{**SERVER_DEFAULTS, **overrides}), timeout=300)


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
