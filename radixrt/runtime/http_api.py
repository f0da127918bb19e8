"""The HTTP API (ASGI, served by uvicorn): SGLang's native endpoints over the Frontend.

`/generate`, `/health` (+ `/health_generate`), `/get_model_info`, `/get_server_info`,
`/flush_cache`, `/stats`. Every error is `{"error": {message, type, param, code}}` with its status.
Other routers (e.g. the OpenAI API) plug in with `app.include_router`; `app.state.frontend`
holds the Frontend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from radixrt.errors import InvalidRequest, Overloaded, RadixRTError
from radixrt.runtime import protocol
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.frontend import Frontend, Stream
from radixrt.runtime.generate_api import StreamText, error_json, parse_generate, reply_error_json, result_json

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 << 20
OPEN_PATHS = frozenset({"/health", "/health_generate"})


class BodyTooLarge(RadixRTError):
    status = 413
    kind = "invalid_request_error"


class ReplyError(Exception):
    """A request's ErrorReply, raised to answer the whole HTTP call with its status."""

    def __init__(self, reply: protocol.ErrorReply):
        super().__init__(reply.message)
        self.reply = reply


@dataclasses.dataclass(frozen=True)
class HttpOptions:
    max_body_bytes: int = MAX_BODY_BYTES
    health_timeout: float = 10.0  # seconds the worker may take to answer between two steps
    control_timeout: float = 60.0
    disconnect_poll: float = 0.5


def _json(content: Any, status_code: int = 200) -> Response:
    """msgspec encodes -inf logprobs as null, where json.dumps(allow_nan=False) would fail."""
    return Response(msgspec.json.encode(content), status_code=status_code, media_type="application/json")


class ApiKeyGuard:
    """ASGI middleware: `Authorization: Bearer KEY` on every path but the health checks."""

    def __init__(self, app: Any, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = error_json(401, "missing or wrong API key (Authorization: Bearer KEY)")
                await _json(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_json(request: Request, limit: int) -> Any:
    size, parts = 0, []
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise BodyTooLarge(f"the request body exceeds {limit} bytes")
        parts.append(part)
    try:
        return msgspec.json.decode(b"".join(parts))
    except msgspec.DecodeError as e:
        raise InvalidRequest(f"the body is not valid JSON: {e}") from None


def create_app(frontend: Frontend, args: ServerArgs, options: HttpOptions | None = None) -> FastAPI:
    """The ASGI app for one Frontend."""
    opts = options or HttpOptions()
    app = FastAPI(title="radixrt", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.frontend = frontend
    if args.api_key:
        app.add_middleware(ApiKeyGuard, api_key=args.api_key)
    app.add_exception_handler(RadixRTError, _radixrt_error)
    app.add_exception_handler(ReplyError, _reply_error)
    app.add_exception_handler(Exception, _internal_error)
    namespaces = itertools.count()

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        call = parse_generate(await read_json(request, opts.max_body_bytes))
        prepared = [frontend.prepare(r, f"http{next(namespaces)}/") for r in call.requests]
        streams = _submit_all(frontend, prepared, [r.rid for r in call.requests])
        if call.stream:
            return StreamingResponse(_sse(streams), media_type="text/event-stream")
        results = await _until_done_or_gone(request, _collect(streams), opts.disconnect_poll)
        if results is None:
            return Response(status_code=499)  # nobody is listening
        many = call.is_batch or len(results) > 1
        return _json([result_json(r) for r in results] if many else result_json(results[0]))

    @app.get("/health")
    @app.get("/health_generate")
    async def health() -> Response:
        try:
            await frontend.control(protocol.GetStats(), opts.health_timeout)
        except Overloaded as e:
            return _json(error_json(503, str(e)), status_code=503)
        return _json({"status": "ok"})

    @app.get("/get_model_info")
    async def model_info() -> Response:
        info = msgspec.structs.asdict(frontend.tm.model_info())
        return _json({**info, "tokenizer_path": info["model_path"], "is_generation": True})

    @app.get("/get_server_info")
    async def server_info() -> Response:
        public = {k: v for k, v in dataclasses.asdict(args).items() if k != "api_key"}
        return _json({**public, **frontend.frontend_stats()})

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> Response:
        answer = await frontend.control(protocol.FlushCache(), opts.control_timeout)
        return _json(answer)

    @app.get("/stats")
    async def stats() -> Response:
        return _json(await frontend.stats(opts.control_timeout))

    return app


async def _radixrt_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RadixRTError)
    return _json(error_json(exc.status, str(exc), getattr(exc, "param", None)), status_code=exc.status)


async def _internal_error(_request: Request, exc: Exception) -> Response:
    return _json(error_json(500, f"internal error: {exc}"), status_code=500)


async def _reply_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ReplyError)
    return _json(reply_error_json(exc.reply), status_code=exc.reply.status)


def _submit_all(frontend: Frontend, prepared: list[Any], client_rids: list[str]) -> list[Stream]:
    streams: list[Stream] = []
    try:
        for p, rid in zip(prepared, client_rids, strict=True):
            streams.append(frontend.submit(p, rid))
    except BaseException:
        for stream in streams:
            stream.close()
        raise
    return streams


async def _collect(streams: list[Stream]) -> list[protocol.GenerateResult]:
    """Every final result, in request order; the first error fails the whole call."""
    try:
        results = []
        for stream in streams:
            async for msg in stream:
                if isinstance(msg, protocol.ErrorReply):
                    raise ReplyError(msg)
                if isinstance(msg, protocol.GenerateResult):
                    results.append(msg)
        return results
    finally:
        for stream in streams:
            stream.close()


async def _until_done_or_gone(request: Request, work: Any, poll: float) -> Any:
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


async def _sse(streams: list[Stream]) -> AsyncIterator[bytes]:
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
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

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
