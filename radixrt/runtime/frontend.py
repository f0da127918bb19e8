"""The frontend's core: routes client requests to the worker and the worker's outputs back.

One asyncio task reads the worker's pipe and hands each TokenOut to the request that owns its
rid. Requests arrive from the HTTP API and the ZMQ server, each under a namespace of its own
(one per HTTP request, one per ZMQ connection), so clients can neither collide nor read each
other's outputs. Nothing here touches sockets of clients; `Stream` is what the edges consume.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from typing import Any, Protocol

import msgspec

from radixrt.errors import InvalidRequest, Overloaded
from radixrt.runtime import protocol
from radixrt.runtime.protocol import ErrorOut, ErrorReply, ServerMsg, TokenOut
from radixrt.runtime.tokenizer_manager import TokenizerManager
from radixrt.runtime.zmq_io import FrontendWorkerLink

logger = logging.getLogger(__name__)

_END = object()  # queued after a request's last message
COUNTERS = ("requests_received", "requests_served", "requests_failed", "requests_aborted")


class Handler(Protocol):
    """Turns one client request's worker outputs into client messages."""

    worker_rids: list[str]

    @property
    def finished(self) -> bool: ...

    def on_output(self, out: TokenOut) -> list[Any]: ...

    def on_error(self, err: ErrorOut) -> ErrorReply: ...


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


class Stream:
    """The messages of one submitted request, in order, ending after its last one.

    Leaving it early (`close`, or the consuming task being cancelled) aborts the request.
    """

    def __init__(self, frontend: Frontend, handler: Handler, rid: str, client_rid: str):
        self.frontend = frontend
        self.handler = handler
        self.rid = rid  # namespaced
        self.client_rid = client_rid
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.done = False

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> ServerMsg:
        if self.done:
            raise StopAsyncIteration
        try:
            item = await self.queue.get()
        except BaseException:
            self.close()
            raise
        if item is _END:
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
            self.frontend.abort(self)


class Frontend:
    """Request table, worker I/O, control calls (stats, flush) and worker-death handling."""

    def __init__(self, link: FrontendWorkerLink, tm: TokenizerManager, worker_pid: int | None = None):
        self.link = link
        self.tm = tm
        self.worker_pid = worker_pid
        self.worker_error: str | None = None
        self.counters: Counter[str] = Counter()
        self._streams: dict[str, Stream] = {}  # worker rid -> stream
        self._by_rid: dict[str, Stream] = {}  # namespaced client rid -> stream
        self._control: deque[asyncio.Future[dict[str, Any]]] = deque()

    # ---- submitting ------------------------------------------------------------------------

    def prepare(self, req: protocol.GenerateRequest, namespace: str) -> tuple[Any, list[Any]]:
        """Validate and tokenize (no side effects); raises InvalidRequest."""
        req = msgspec.structs.replace(req, rid=namespace + req.rid, api_key=None)
        tokenized = self.tm.tokenize(req)
        return self.tm.new_state(req, tokenized), tokenized

    def submit(self, prepared: tuple[Any, list[Any]], client_rid: str) -> Stream:
        """Send a prepared request to the worker; its outputs arrive on the returned Stream."""
        state, tokenized = prepared
        return self._start(state, tokenized, state.req.rid, client_rid)

    def generate(self, req: protocol.GenerateRequest, namespace: str) -> Stream:
        return self.submit(self.prepare(req, namespace), req.rid)

    def score(self, req: protocol.ScoreRequest, namespace: str) -> Stream:
        job = self.tm.score(msgspec.structs.replace(req, rid=namespace + req.rid, api_key=None))
        return self._start(ScoreHandler(job), job.requests, job.rid, req.rid)

    def _start(self, handler: Handler, tokenized: list[Any], rid: str, client_rid: str) -> Stream:
        self.check_worker()
        if rid in self._by_rid or any(r in self._streams for r in handler.worker_rids):
            raise InvalidRequest(f"rid {client_rid!r} is already in use by a running request", "rid")
        stream = Stream(self, handler, rid, client_rid)
        self._by_rid[rid] = stream
        for worker_rid in handler.worker_rids:
            self._streams[worker_rid] = stream
        for t in tokenized:
            self.link.send(t)
        self.counters["requests_received"] += 1
        return stream

    def abort(self, stream: Stream) -> None:
        """Forget a request nobody listens to any more and tell the worker to drop it."""
        if self._by_rid.pop(stream.rid, None) is None:
            return  # it had ended already; its last messages were just not read
        for rid in stream.handler.worker_rids:
            if self._streams.pop(rid, None) is not None:
                self.link.send(protocol.Abort(rid=rid))
        self.counters["requests_aborted"] += 1

    def request_abort(self, rid: str) -> None:
        """A client's explicit abort: the request ends through the worker's finish_reason "abort"."""
        stream = self._by_rid.get(rid)
        for worker_rid in stream.handler.worker_rids if stream else []:
            if worker_rid in self._streams:
                self.link.send(protocol.Abort(rid=worker_rid))

    def check_worker(self) -> None:
        if self.worker_error is not None:
            raise Overloaded(self.worker_error)

    @property
    def in_flight(self) -> int:
        return len(self._by_rid)

    # ---- control ---------------------------------------------------------------------------

    async def control(self, msg: protocol.GetStats | protocol.FlushCache, timeout: float) -> dict[str, Any]:
        """Send a control message and wait for the worker's StatsOut (answered in order)."""
        self.check_worker()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._control.append(future)
        self.link.send(msg)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise Overloaded(f"the worker did not answer {type(msg).__name__} within {timeout:g}s") from None

    async def stats(self, timeout: float) -> dict[str, Any]:
        worker = await self.control(protocol.GetStats(), timeout)
        return {**worker, **self.frontend_stats()}

    def frontend_stats(self) -> dict[str, Any]:
        return {
            **{k: self.counters[k] for k in COUNTERS},
            "requests_in_flight": self.in_flight,
            "worker_pid": self.worker_pid,
            "worker_alive": self.worker_error is None,
        }

    # ---- the worker's outputs --------------------------------------------------------------

    async def run(self) -> None:
        """Read the worker's pipe forever, dispatching every message."""
        while True:
            msg = await self.link.recv()
            try:
                self.dispatch(msg)
            except Exception:
                logger.exception("failed to handle %s from the worker", type(msg).__name__)

    def dispatch(self, msg: protocol.WorkerOutMsg) -> None:
        if isinstance(msg, protocol.TokenBatch):
            for out in msg.outs:
                self._on_output(out)
        elif isinstance(msg, ErrorOut):
            self._on_error(msg)
        elif isinstance(msg, protocol.StatsOut):
            self._on_stats(msg.stats)
        else:
            logger.info("worker: %s", msg)

    def _on_output(self, out: TokenOut) -> None:
        stream = self._streams.get(out.rid)
        if stream is None:
            return  # aborted or already failed: late outputs are dropped
        try:
            client_msgs = stream.handler.on_output(out)
        except Exception as e:  # one request's failure (e.g. detokenizing) ends that request only
            logger.exception("request %s failed", stream.rid)
            self._fail(stream, ErrorReply(rid=stream.rid, status=500, message=f"internal error: {e}"))
            return
        for client_msg in client_msgs:
            stream.queue.put_nowait(client_msg)
        if stream.handler.finished:
            self._finish(stream, "requests_served")

    def _on_error(self, err: ErrorOut) -> None:
        stream = self._streams.get(err.rid)
        if stream is not None:
            self._fail(stream, stream.handler.on_error(err), gone=err.rid)

    def _fail(self, stream: Stream, reply: ErrorReply, gone: str | None = None) -> None:
        """End a request with `reply`; the worker drops its other sequences (n > 1)."""
        stream.queue.put_nowait(reply)
        for rid in stream.handler.worker_rids:
            if rid != gone and rid in self._streams:
                self.link.send(protocol.Abort(rid=rid))
        self._finish(stream, "requests_failed")

    def _finish(self, stream: Stream, counter: str) -> None:
        self._by_rid.pop(stream.rid, None)
        for rid in stream.handler.worker_rids:
            self._streams.pop(rid, None)
        stream.queue.put_nowait(_END)
        self.counters[counter] += 1

    def _on_stats(self, stats: dict[str, Any]) -> None:
        if not self._control:
            logger.warning("unexpected StatsOut from the worker")
            return
        future = self._control.popleft()  # answers come in request order: this one is its
        if not future.done():  # done: its caller timed out and has gone
            future.set_result(stats)

    def fail_all(self, message: str) -> None:
        """The worker is gone: every waiting request and control call fails with 503."""
        self.worker_error = message
        for stream in list(self._by_rid.values()):
            stream.queue.put_nowait(ErrorReply(rid=stream.rid, status=Overloaded.status, message=message))
            self._finish(stream, "requests_failed")
        while self._control:
            future = self._control.popleft()
            if not future.done():
                future.set_exception(Overloaded(message))
