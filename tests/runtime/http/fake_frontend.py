"""A Frontend stand-in for the HTTP app's tests: what the routes call, with no worker behind it."""

from __future__ import annotations

from typing import Any

from radixrt.runtime import protocol


class FakeMetrics:
    def __init__(self) -> None:
        self.errors: list[int] = []

    def count_error(self, status: int) -> None:
        self.errors.append(status)


class FakeFrontend:
    """Records the control messages the worker would get; `tree` is what `/debug/cache` draws."""

    def __init__(self, tree: dict[str, Any] | None = None) -> None:
        self.metrics = FakeMetrics()
        self.sent: list[Any] = []
        self.tree = tree

    async def control(self, msg: Any, timeout: float) -> dict[str, Any]:
        self.sent.append(msg)
        return {"flushed": True}

    async def cache_tree(self, max_nodes: int, timeout: float, api_key=None, cache_salt=None) -> dict[str, Any]:
        self.sent.append(protocol.DebugCache(max_nodes=max_nodes))
        assert self.tree is not None
        return self.tree

    def frontend_stats(self) -> dict[str, Any]:
        return {"requests_in_flight": 0}
