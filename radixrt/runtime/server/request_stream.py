"""`Stream`: the messages of one submitted request, as the HTTP and ZMQ edges consume them.

The buffer is bounded whatever the reader does: a chunk that arrives while the previous chunk
is still unread is merged into it (text and ids appended, the newer meta_info kept), so a slow
reader holds at most one chunk, its final results and the end mark, never one chunk per token.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from radixrt.runtime.protocol import ErrorOut, ErrorReply, GenerateChunk, ServerMsg, TokenOut

END = object()  # put after a request's last message


class Handler(Protocol):
    """Turns one client request's worker outputs into client messages."""

    worker_rids: list[str]

    @property
    def finished(self) -> bool: ...

    def on_output(self, out: TokenOut) -> list[Any]: ...

    def on_error(self, err: ErrorOut) -> ErrorReply: ...


def merge_chunks(older: GenerateChunk, newer: GenerateChunk) -> GenerateChunk:
    """One chunk carrying both pieces (meta_info is cumulative, so the newer one wins)."""
    return GenerateChunk(
        rid=newer.rid,
        text=older.text + newer.text,
        output_ids=older.output_ids + newer.output_ids,
        meta_info=newer.meta_info,
    )


class Stream:
    """Async iterator over one request's messages, ending after its last one.

    Leaving it early (`close`, or the consuming task being cancelled) calls `on_close`, which
    aborts the request.
    """

    def __init__(self, on_close: Callable[[Stream], None], handler: Handler, rid: str, client_rid: str):
        self.on_close = on_close
        self.handler = handler
        self.rid = rid  # namespaced
        self.client_rid = client_rid
        self.done = False
        self._items: deque[Any] = deque()
        self._ready = asyncio.Event()

    @property
    def buffered(self) -> int:
        """Messages waiting to be read (at most a chunk, the results and the end mark)."""
        return len(self._items)

    def put(self, item: Any) -> None:
        if isinstance(item, GenerateChunk) and self._items and isinstance(self._items[-1], GenerateChunk):
            self._items[-1] = merge_chunks(self._items[-1], item)
        else:
            self._items.append(item)
        self._ready.set()

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> ServerMsg:
        if self.done:
            raise StopAsyncIteration
        try:
            while not self._items:
                self._ready.clear()
                await self._ready.wait()
        except BaseException:
            self.close()
            raise
        item = self._items.popleft()
        if item is END:
            self.done = True
            raise StopAsyncIteration
        return self._as_client(item)

    def _as_client(self, msg: Any) -> ServerMsg:
        """The message under the rid the client chose (the worker saw a namespaced one)."""
        if isinstance(getattr(msg, "meta_info", None), dict) and "id" in msg.meta_info:
            msg.meta_info["id"] = self.client_rid
        return msgspec.structs.replace(msg, rid=self.client_rid) if hasattr(msg, "rid") else msg

    def close(self) -> None:
        """Abort the request unless it already ended."""
        if not self.done:
            self.done = True
            self.on_close(self)


class ScoreHandler:
    """Adapts a tokenizer_manager.ScoreJob to the Handler interface."""

    def __init__(self, job: Any):
        self.job = job
        self.worker_rids = job.worker_rids
        self.finished = False

    def on_output(self, out: TokenOut) -> list[Any]:
        result = self.job.on_output(out)
        self.finished = result is not None
        return [] if result is None else [result]

    def on_error(self, err: ErrorOut) -> ErrorReply:
        return ErrorReply(rid=self.job.rid, status=err.status, message=err.message, param=err.param)
