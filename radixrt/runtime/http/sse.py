"""Server-sent events for `/generate` streams, and a response that gives up on a client that
stops reading.

uvicorn applies back-pressure: once a client stops reading, sending waits. `StallGuardedResponse`
bounds that wait; past it the response stops, its streams are closed (aborting the requests and
freeing their KV slots) and uvicorn closes the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import msgspec
from fastapi import Request
from fastapi.responses import StreamingResponse

from radixrt.runtime import protocol
from radixrt.runtime.http.generate import StreamText, reply_error_json
from radixrt.runtime.server.request_stream import Stream

logger = logging.getLogger(__name__)


class ClientStalled(Exception):
    pass


class StallGuardedResponse(StreamingResponse):
    """A StreamingResponse whose every send must finish within `timeout` seconds."""

    def __init__(self, content: AsyncIterator[bytes], streams: list[Stream], timeout: float, **kw: Any):
        super().__init__(content, **kw)
        self.streams = streams
        self.timeout = timeout

    async def stream_response(self, send: Any) -> None:
        async def bounded_send(message: Any) -> None:
            try:
                await asyncio.wait_for(send(message), self.timeout)
            except asyncio.TimeoutError:
                raise ClientStalled from None

        try:
            await super().stream_response(bounded_send)
        except ClientStalled:
            rids = ", ".join(s.rid for s in self.streams)
            logger.warning("client stopped reading for %.0fs: aborted %s and closed its connection", self.timeout, rids)
            for stream in self.streams:
                stream.close()
            if hasattr(self.body_iterator, "aclose"):
                await self.body_iterator.aclose()


async def sse(streams: list[Stream]) -> AsyncIterator[bytes]:
    """Server-sent events: each `data:` line the whole text so far, then `data: [DONE]`."""
    with_index = len(streams) > 1 or len(streams[0].handler.worker_rids) > 1
    text = StreamText()
    try:
        async for index, msg in _merged(streams):
            event: dict[str, Any] | None
            if isinstance(msg, protocol.ErrorReply):
                event = reply_error_json(msg)
            elif isinstance(msg, protocol.GenerateChunk):
                event = text.chunk_event(index, msg, with_index)
            else:
                event = text.result_event(index, msg, with_index)
            if event is not None:
                yield b"data: " + msgspec.json.encode(event) + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        for stream in streams:
            stream.close()


async def _merged(streams: list[Stream]) -> AsyncIterator[tuple[int, Any]]:
    """(index, message) from all streams as they arrive; n > 1 results get consecutive indices."""
    offsets = list(itertools.accumulate((len(s.handler.worker_rids) for s in streams), initial=0))
    # NOTE: maxsize=1 keeps the messages a slow reader has not taken in the Streams, which merge them.
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=1)

    async def pump(i: int, stream: Stream) -> None:
        results = 0
        async for msg in stream:
            index = offsets[i] + results
            results += isinstance(msg, protocol.GenerateResult)
            await queue.put((index, msg))
        await queue.put((-1, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, msg = await queue.get()
            if msg is None:
                running -= 1
            else:
                yield index, msg
    finally:
        for task in tasks:
            task.cancel()


T = TypeVar("T")


async def until_done_or_gone(request: Request, work: Awaitable[T], poll: float) -> T | None:
    """Run `work`; cancel it (aborting its requests) and return None if the client disconnects first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if await request.is_disconnected():
                return None
    finally:
        task.cancel()
