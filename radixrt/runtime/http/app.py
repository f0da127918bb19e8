"""The HTTP API (ASGI, served by uvicorn): SGLang's native endpoints over the Frontend.

`/generate`, `/health` (+ `/health_generate`), `/get_model_info`, `/get_server_info`,
`/flush_cache` (POST), `/stats`, `/metrics` (Prometheus text), `/debug/cache` (SVG of the radix tree;
without an API key, to loopback clients only).
Every error is `{"error": {message, type, param, code}}` with its status; a 503 also carries
`Retry-After`. Other routers (e.g. the OpenAI API) plug in with `app.include_router`;
`app.state.frontend` holds the Frontend.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import Response

from radixrt.errors import Forbidden, InvalidRequest, Overloaded, RadixRTError
from radixrt.runtime import protocol
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.http.cache_svg import render_svg
from radixrt.runtime.http.common import HttpOptions, bearer_key, error_json, json_response, read_json
from radixrt.runtime.http.generate import parse_generate, reply_error_json, result_json
from radixrt.runtime.http.sglang_compat import sglang_compat_router
from radixrt.runtime.http.sse import StallGuardedResponse, sse, until_done_or_gone
from radixrt.runtime.openai.router import openai_router
from radixrt.runtime.server.frontend import Frontend
from radixrt.runtime.server.metrics import CONTENT_TYPE
from radixrt.runtime.server.request_stream import Stream
from radixrt.runtime.server.server_metrics import ServerMetrics
from radixrt.runtime.server.tenants import matching_key

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/health_generate"})
PROGRAM_HEADER = "x-radixrt-program"  # a DSL program's requests share it (a cluster's affinity key)
MAX_PROGRAM_ID = 128
MAX_DRAWN_NODES = 2000


class ReplyError(Exception):
    """A request's ErrorReply, raised to answer the whole HTTP call with its status."""

    def __init__(self, reply: protocol.ErrorReply):
        super().__init__(reply.message)
        self.reply = reply


class ApiKeyGuard:
    """ASGI middleware: `Authorization: Bearer KEY` (any of the keys) on every path but the health checks."""

    def __init__(self, app: Any, api_keys: tuple[str, ...], metrics: ServerMetrics):
        self.app = app
        self.keys = api_keys
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            key = given[len("Bearer ") :] if given.startswith("Bearer ") else None
            if key is None or matching_key(key, self.keys) is None:
                self.metrics.count_error(401)
                body = error_json(401, "missing or wrong API key (Authorization: Bearer KEY)")
                await json_response(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(frontend: Frontend, args: ServerArgs, options: HttpOptions | None = None) -> FastAPI:
    """The ASGI app for one Frontend."""
    opts = options or HttpOptions.from_args(args)
    app = FastAPI(title="radixrt", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.frontend = frontend
    app.state.http_options = opts
    if args.api_keys:
        app.add_middleware(ApiKeyGuard, api_keys=args.api_keys, metrics=frontend.metrics)
    app.add_exception_handler(RadixRTError, _radixrt_error)
    app.add_exception_handler(ReplyError, _reply_error)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(openai_router)
    app.include_router(sglang_compat_router)
    namespaces = itertools.count()

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        call = parse_generate(await read_json(request, opts), bearer_key(request))
        program = request.headers.get(PROGRAM_HEADER)
        if program:
            call.requests = [msgspec.structs.replace(r, program_id=program[:MAX_PROGRAM_ID]) for r in call.requests]
        if len(call.requests) > opts.max_prompts:
            message = f"{len(call.requests)} prompts in one request; the limit is {opts.max_prompts}"
            raise InvalidRequest(message, "text")
        frontend.check_accepting()  # before tokenizing: a draining or full server answers fast
        prepared = [frontend.prepare(r, f"http{next(namespaces)}/") for r in call.requests]
        streams = _submit_all(frontend, prepared, [r.rid for r in call.requests])
        if call.stream:
            return StallGuardedResponse(sse(streams), streams, opts.client_timeout, media_type="text/event-stream")
        results = await until_done_or_gone(request, _collect(streams), opts.disconnect_poll)
        if results is None:
            return Response(status_code=499)  # nobody is listening
        many = call.is_batch or len(results) > 1
        return json_response([result_json(r) for r in results] if many else result_json(results[0]))

    @app.get("/health")
    @app.get("/health_generate")
    async def health() -> Response:
        try:
            frontend.check_accepting()  # draining for shutdown counts as unhealthy
            await frontend.control(protocol.GetStats(), opts.health_timeout)
        except Overloaded as e:
            return json_response(error_json(503, str(e)), status_code=503)
        return json_response({"status": "ok"})

    @app.get("/get_model_info")
    async def model_info() -> Response:
        info = msgspec.structs.asdict(frontend.tm.model_info())
        return json_response({**info, "tokenizer_path": info["model_path"], "is_generation": True})

    @app.get("/get_server_info")
    @app.get("/server_info")  # SGLang's RuntimeEndpoint.get_server_info
    async def server_info() -> Response:
        hidden = ("api_key", "api_keys", "api_key_file")
        public = {k: v for k, v in dataclasses.asdict(args).items() if k not in hidden}
        return json_response({**public, **frontend.frontend_stats()})

    @app.post("/flush_cache")  # it changes state: never a GET, which crawlers and prefetchers send
    async def flush_cache() -> Response:
        answer = await frontend.control(protocol.FlushCache(), opts.control_timeout)
        return json_response(answer)

    @app.get("/stats")
    async def stats() -> Response:
        return json_response(await frontend.stats(opts.control_timeout))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(await frontend.metrics_text(opts.health_timeout), media_type=CONTENT_TYPE)

    @app.get("/debug/cache")
    async def debug_cache(request: Request, max_nodes: int = 500, cache_salt: str | None = None) -> Response:
        if not args.api_keys:
            _only_from_loopback(request)
        drawn = min(max(max_nodes, 1), MAX_DRAWN_NODES)
        tree = await frontend.cache_tree(drawn, opts.control_timeout, bearer_key(request), cache_salt)
        return Response(render_svg(tree), media_type="image/svg+xml")

    return app


def _only_from_loopback(request: Request) -> None:
    """`/debug/cache` shows every client's prompt text: without an API key, only to this host."""
    host = request.client.host if request.client else ""
    if not _is_loopback(host):
        raise Forbidden(
            f"/debug/cache shows every client's prompt text, so a server without --api-key serves it only to "
            f"loopback clients (127.0.0.0/8, ::1), not to {host or 'an unknown address'}; start the server with "
            "--api-key to read it from another host"
        )


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # not an IP address: a unix socket peer or a test client's made-up name
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


async def _radixrt_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RadixRTError)
    request.app.state.frontend.metrics.count_error(exc.status)
    return json_response(error_json(exc.status, str(exc), getattr(exc, "param", None)), status_code=exc.status)


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.error("internal error on %s", request.url.path, exc_info=exc)
    request.app.state.frontend.metrics.count_error(500)
    return json_response(error_json(500, f"internal error: {exc}"), status_code=500)


async def _reply_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ReplyError)
    return json_response(reply_error_json(exc.reply), status_code=exc.reply.status)


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
