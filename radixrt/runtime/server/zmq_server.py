"""The ZMQ ROUTER endpoint for DSL clients (DEALER sockets, one msgpack protocol Struct a frame).

A client sends ClientMsg frames; replies go back to the same connection only:
GenerateRequest -> GenerateChunk* then GenerateResult (n of them for n > 1) or one ErrorReply;
ScoreRequest -> ScoreResult or ErrorReply; AbortRequest -> the aborted request ends (its last
message has finish_reason "abort"); FlushCache -> Ack(ok=flushed); GetStats -> StatsReply;
GetModelInfo -> ModelInfo. Client rids live in a per-connection namespace.

Limits: frames over `max_frame_bytes` are dropped by ZMQ itself; a connection may have at most
`max_requests_per_connection` requests running (more get ErrorReply 429); a client that stops
reading (its queue at the high-water mark for `send_timeout` seconds) has its request aborted.
Sends never block the socket for other clients.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from radixrt.errors import RadixRTError, TooManyRequests, Unauthorized
from radixrt.runtime import protocol
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.protocol import ClientMsg, ErrorReply
from radixrt.runtime.server.frontend import Frontend
from radixrt.runtime.server.request_stream import Stream
from radixrt.runtime.server.tenants import matching_key
from radixrt.runtime.server.zmq_io import decode_or_drop

logger = logging.getLogger(__name__)

RETRY_SEND_S = 0.02  # a client at its high-water mark is retried this often


@dataclasses.dataclass(frozen=True)
class ZmqOptions:
    max_frame_bytes: int = 8 << 20
    max_requests_per_connection: int = 1024
    send_timeout: float = 60.0
    control_timeout: float = 60.0

    @classmethod
    def from_args(cls, args: ServerArgs) -> ZmqOptions:
        return cls(args.max_body_bytes, args.max_requests_per_connection, args.client_timeout)


class ZmqServer:
    """Binds one ROUTER socket at once (a taken port fails early); `run(frontend)` serves it."""

    def __init__(self, address: str, api_keys: str | Sequence[str] | None, options: ZmqOptions | None = None):
        self.frontend: Frontend | None = None
        self.api_keys = (api_keys,) if isinstance(api_keys, str) else tuple(api_keys or ())
        self.opts = options or ZmqOptions()
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a gone client raises: abort its work
        self.sock.setsockopt(zmq.MAXMSGSIZE, self.opts.max_frame_bytes)
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            self.sock.bind(address)
        except zmq.ZMQError as e:
            self.close()
            raise OSError(f"cannot bind the ZMQ socket at {address}: {e}") from None
        self._encoder = protocol.encoder()
        self._decoder = protocol.decoder(ClientMsg)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running: Counter[bytes] = Counter()  # requests running per connection

    async def run(self, frontend: Frontend) -> None:
        self.frontend = frontend
        while True:
            frames = await self.sock.recv_multipart()
            try:
                await self.handle(frames)
            except Exception:
                logger.exception("zmq: failed to handle a frame")

    async def handle(self, frames: list[bytes]) -> None:
        """One client message: [identity, payload] (DEALER) or [identity, b"", payload] (REQ-style)."""
        if len(frames) not in (2, 3) or (len(frames) == 3 and frames[1]):
            logger.warning("zmq client: dropped a message of %d frames", len(frames))
            return
        route, payload = frames[:-1], frames[-1]
        msg = decode_or_drop(self._decoder, payload, "zmq client")
        if msg is None:
            rid = _recover_rid(payload)
            self.frontend.metrics.count_error(400)
            if rid is not None:
                await self._send(route, ErrorReply(rid=rid, status=400, message="malformed message"))
            return
        await self._dispatch(route, msg)

    async def _dispatch(self, route: list[bytes], msg: Any) -> None:
        namespace = f"zmq{route[0].hex()}/"
        if isinstance(msg, (protocol.GenerateRequest, protocol.ScoreRequest)):
            self._start(route, namespace, msg)
        elif isinstance(msg, protocol.AbortRequest):
            if self._key_ok(msg.api_key):
                self.frontend.request_abort(namespace + msg.rid)
        else:  # a control call waits for the worker: never in the receive loop
            self._spawn(self._answer_control(route, msg))

    def _start(self, route: list[bytes], namespace: str, msg: Any) -> None:
        try:
            self._check_key(msg.api_key)
            self._check_connection_limit(route[0])
            is_score = isinstance(msg, protocol.ScoreRequest)
            stream = self.frontend.score(msg, namespace) if is_score else self.frontend.generate(msg, namespace)
        except RadixRTError as e:
            self.frontend.metrics.count_error(e.status)
            reply = ErrorReply(rid=msg.rid, status=e.status, message=str(e), param=getattr(e, "param", None))
            self._spawn(self._send(route, reply))
            return
        self._running[route[0]] += 1
        self._spawn(self._pump(route, stream))

    def _check_connection_limit(self, identity: bytes) -> None:
        limit = self.opts.max_requests_per_connection
        if self._running[identity] >= limit:
            raise TooManyRequests(f"this connection already has {limit} requests running; wait for one to end")

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _key_ok(self, given: str | None) -> bool:
        return not self.api_keys or matching_key(given, self.api_keys) is not None

    def _check_key(self, given: str | None) -> None:
        if not self._key_ok(given):
            raise Unauthorized("missing or wrong api_key")

    async def _pump(self, route: list[bytes], stream: Stream) -> None:
        try:
            async for msg in stream:
                if not await self._send(route, msg):
                    return
        finally:
            stream.close()
            self._running[route[0]] -= 1
            if self._running[route[0]] <= 0:
                del self._running[route[0]]

    async def _answer_control(self, route: list[bytes], msg: Any) -> None:
        try:
            self._check_key(msg.api_key)
            if isinstance(msg, protocol.GetModelInfo):
                answer: Any = self.frontend.tm.model_info()
            elif isinstance(msg, protocol.FlushCache):
                flushed = await self.frontend.control(msg, self.opts.control_timeout)
                answer = protocol.Ack(ok=bool(flushed.get("flushed", False)))
            else:
                answer = protocol.StatsReply(stats=await self.frontend.stats(self.opts.control_timeout))
        except RadixRTError as e:
            self.frontend.metrics.count_error(e.status)
            answer = ErrorReply(rid="", status=e.status, message=str(e))
        await self._send(route, answer)

    async def _send(self, route: list[bytes], msg: Any) -> bool:
        """Send to one client; False when it has gone or stalled (its work is then abandoned).

        Never waits inside ZMQ: a queued blocking send would hold up every later send to every
        client, so a client at its high-water mark is retried until `send_timeout`.
        """
        frames = [*route, self._encoder.encode(msg)]
        deadline = time.monotonic() + self.opts.send_timeout
        while True:
            try:
                await self.sock.send_multipart(frames, flags=zmq.DONTWAIT)
                return True
            except zmq.Again:
                if time.monotonic() >= deadline:
                    logger.warning("zmq: client %s stopped reading for %.0fs; aborting its request",
                                   route[0].hex(), self.opts.send_timeout)  # fmt: skip
                    return False
                await asyncio.sleep(RETRY_SEND_S)
            except zmq.ZMQError as e:
                logger.info("zmq: client %s is gone (%s)", route[0].hex(), e)
                return False

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.sock.close(linger=0)
        self.ctx.term()


def _recover_rid(payload: bytes) -> str | None:
    """The rid of a frame the typed decoder rejected, when it is a map with a string rid."""
    try:
        raw = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        return None
    rid = raw.get("rid") if isinstance(raw, dict) else None
    return rid if isinstance(rid, str) else None
