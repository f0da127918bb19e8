"""The frontend's core: routes client requests to the worker and the worker's outputs back.

One asyncio task reads the worker's pipe and hands each TokenOut to the request that owns its
rid. Requests arrive from the HTTP API and the ZMQ server, each under a namespace of its own
(one per HTTP request, one per ZMQ connection), so clients can neither collide nor read each
other's outputs. Nothing here touches sockets of clients; `Stream` is what the edges consume.

Admission happens here, before anything reaches the worker: at most `--max-running-requests`
+ `--max-queued-requests` sequences are in flight (more get 503 at once), and none are taken
while the server drains for shutdown or while the worker is down or restarting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import msgspec

from radixrt.errors import InvalidRequest, Overloaded
from radixrt.runtime import protocol
from radixrt.runtime.protocol import ErrorOut, ErrorReply, TokenOut
from radixrt.runtime.server.request_stream import END, Handler, ScoreHandler, Stream
from radixrt.runtime.server.server_metrics import RequestClock, ServerMetrics
from radixrt.runtime.server.tenants import effective_salt
from radixrt.runtime.server.tokenizer_manager import TokenizerManager
from radixrt.runtime.server.zmq_io import FrontendWorkerLink

logger = logging.getLogger(__name__)

COUNTERS = ("requests_received", "requests_served", "requests_failed", "requests_aborted")


class Frontend:
    """Request table, admission, worker I/O, control calls (stats, flush) and the worker's life."""

    def __init__(self, link: FrontendWorkerLink, tm: TokenizerManager, worker_pid: int | None = None):
        self.link = link
        self.tm = tm
        self.args = tm.args
        self.worker_pid = worker_pid
        self.worker_error: str | None = None  # set while the worker is down or restarting
        self.refusing: str | None = None  # set while draining for shutdown
        self.counters: Counter[str] = Counter()
        self.metrics = ServerMetrics()
        self._streams: dict[str, Stream] = {}  # worker rid -> stream
        self._by_rid: dict[str, Stream] = {}  # namespaced client rid -> stream
        self._clocks: dict[str, RequestClock] = {}  # namespaced client rid -> its timing
        self._control: deque[asyncio.Future[dict[str, Any]]] = deque()
        self._ready: asyncio.Future[protocol.WorkerReady] | None = None

    # ---- submitting ------------------------------------------------------------------------

    def prepare(self, req: protocol.GenerateRequest, namespace: str) -> tuple[Any, list[Any]]:
        """Validate and tokenize (no side effects); raises InvalidRequest."""
        self._check_grammar_size(req.sampling)
        salt = self._salt(req.api_key, req.cache_salt)
        req = msgspec.structs.replace(req, rid=namespace + req.rid, api_key=None, cache_salt=salt)
        tokenized = self.tm.tokenize(req)
        return self.tm.new_state(req, tokenized), tokenized

    def submit(self, prepared: tuple[Any, list[Any]], client_rid: str) -> Stream:
        """Send a prepared request to the worker; its outputs arrive on the returned Stream."""
        state, tokenized = prepared
        return self._start(state, tokenized, state.req.rid, client_rid)

    def generate(self, req: protocol.GenerateRequest, namespace: str) -> Stream:
        return self.submit(self.prepare(req, namespace), req.rid)

    def score(self, req: protocol.ScoreRequest, namespace: str) -> Stream:
        salt = self._salt(req.api_key, req.cache_salt)
        job = self.tm.score(msgspec.structs.replace(req, rid=namespace + req.rid, api_key=None, cache_salt=salt))
        return self._start(ScoreHandler(job), job.requests, job.rid, req.rid)

    def _salt(self, api_key: str | None, cache_salt: str | None) -> str:
        """The edges checked `api_key`; it names the tenant only when the server has keys."""
        return effective_salt(api_key if self.args.api_keys else None, cache_salt)

    def _check_grammar_size(self, sampling: protocol.SamplingParams) -> None:
        key = sampling.grammar_key
        limit = self.args.max_grammar_bytes
        if key is not None and len(key[1].encode()) > limit:
            raise InvalidRequest(f"the {key[0]} has {len(key[1].encode())} bytes; the limit is {limit}", key[0])

    def _check_capacity(self, sequences: int) -> None:
        limit = self.args.max_in_flight
        if sequences > limit:
            raise InvalidRequest(f"the request has {sequences} sequences; the server runs at most {limit} at once", "n")
        if len(self._streams) + sequences > limit:
            raise Overloaded(f"{len(self._streams)} requests are in flight (limit {limit}); retry later")

    def _start(self, handler: Handler, tokenized: list[Any], rid: str, client_rid: str) -> Stream:
        self.check_accepting()
        if rid in self._by_rid or any(r in self._streams for r in handler.worker_rids):
            raise InvalidRequest(f"rid {client_rid!r} is already in use by a running request", "rid")
        self._check_capacity(len(handler.worker_rids))
        stream = Stream(self.abort, handler, rid, client_rid)
        self._by_rid[rid] = stream
        streaming = bool(getattr(getattr(handler, "req", None), "stream", False))  # RequestState.req
        self._clocks[rid] = self.metrics.start(streaming)
        for worker_rid in handler.worker_rids:
            self._streams[worker_rid] = stream
        for t in tokenized:
            self.link.send(t)
        self.counters["requests_received"] += 1
        return stream

    def abort(self, stream: Stream) -> None:
        """Forget a request nobody listens to any more and tell the worker to drop it."""
        if stream.rid not in self._by_rid:
            return  # it had ended already; its last messages were just not read
        for rid in stream.handler.worker_rids:
            if rid in self._streams:
                self.link.send(protocol.Abort(rid=rid))
        self._end(stream, "aborted")

    def request_abort(self, rid: str) -> None:
        """A client's explicit abort: the request ends through the worker's finish_reason "abort"."""
        stream = self._by_rid.get(rid)
        for worker_rid in stream.handler.worker_rids if stream else []:
            if worker_rid in self._streams:
                self.link.send(protocol.Abort(rid=worker_rid))

    def check_worker(self) -> None:
        if self.worker_error is not None:
            raise Overloaded(self.worker_error)

    def check_accepting(self) -> None:
        """Raise Overloaded (503) while new requests are refused."""
        self.check_worker()
        if self.refusing is not None:
            raise Overloaded(self.refusing)

    def refuse(self, message: str) -> None:
        """Refuse new requests from now on (shutdown); running ones go on."""
        self.refusing = message

    @property
    def in_flight(self) -> int:
        return len(self._by_rid)

    # ---- control ---------------------------------------------------------------------------

    async def control(self, msg: protocol.WorkerInMsg, timeout: float) -> dict[str, Any]:
        """Send a control message (GetStats, FlushCache, DebugCache) and wait for the worker's
        StatsOut (answered in order)."""
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
            "worker_restarts": int(self.metrics.restarts.get()),
        }

    async def metrics_text(self, timeout: float) -> str:
        """The Prometheus exposition, with the worker's gauges when it answers."""
        try:
            worker: dict[str, Any] | None = await self.control(protocol.GetStats(), timeout)
        except Overloaded:
            worker = None
        return self.metrics.render(self.in_flight, worker)

    async def cache_tree(
        self, max_nodes: int, timeout: float, api_key: str | None = None, cache_salt: str | None = None
    ) -> dict[str, Any]:
        """A bounded snapshot of the worker's radix tree (see cache_svg.snapshot): the namespace of
        `api_key` and `cache_salt` only, so a tenant sees its own prompts and no other's."""
        salt = self._salt(api_key, cache_salt)
        answer = await self.control(protocol.DebugCache(max_nodes=max_nodes, salt=salt), timeout)
        return answer["tree"]

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
        elif isinstance(msg, protocol.WorkerReady) and self._ready is not None and not self._ready.done():
            self._ready.set_result(msg)
        else:
            logger.info("worker: %s", msg)

    def _on_output(self, out: TokenOut) -> None:
        stream = self._streams.get(out.rid)
        if stream is None:
            return  # aborted or already failed: late outputs are dropped
        self.metrics.on_output(self._clocks[stream.rid], out)
        try:
            client_msgs = stream.handler.on_output(out)
        except Exception as e:  # one request's failure (e.g. detokenizing) ends that request only
            logger.exception("request %s failed", stream.rid)
            self._fail(stream, ErrorReply(rid=stream.rid, status=500, message=f"internal error: {e}"))
            return
        for client_msg in client_msgs:
            stream.put(client_msg)
        if stream.handler.finished:
            stream.put(END)
            self._end(stream, "served")

    def _on_error(self, err: ErrorOut) -> None:
        stream = self._streams.get(err.rid)
        if stream is not None:
            self._fail(stream, stream.handler.on_error(err), gone=err.rid)

    def _fail(self, stream: Stream, reply: ErrorReply, gone: str | None = None) -> None:
        """End a request with `reply`; the worker drops its other sequences (n > 1)."""
        stream.put(reply)
        stream.put(END)
        for rid in stream.handler.worker_rids:
            if rid != gone and rid in self._streams:
                self.link.send(protocol.Abort(rid=rid))
        self._end(stream, "failed", reply.status)

    def _end(self, stream: Stream, outcome: str, status: int | None = None) -> None:
        self._by_rid.pop(stream.rid, None)
        for rid in stream.handler.worker_rids:
            self._streams.pop(rid, None)
        self.counters[f"requests_{outcome}"] += 1
        self.metrics.on_end(self._clocks.pop(stream.rid), stream.rid, outcome, status)

    def _on_stats(self, stats: dict[str, Any]) -> None:
        if not self._control:
            logger.warning("unexpected StatsOut from the worker")
            return
        future = self._control.popleft()  # answers come in request order: this one is its
        if not future.done():  # done: its caller timed out and has gone
            future.set_result(stats)

    # ---- the worker's life -----------------------------------------------------------------

    def fail_all(self, message: str) -> None:
        """The worker is gone: every waiting request and control call fails with 503."""
        self.worker_error = message
        for stream in list(self._by_rid.values()):  # no Abort: the worker that ran them is gone
            stream.put(ErrorReply(rid=stream.rid, status=Overloaded.status, message=message))
            stream.put(END)
            self._end(stream, "failed", Overloaded.status)
        while self._control:
            future = self._control.popleft()
            if not future.done():
                future.set_exception(Overloaded(message))

    def worker_restarting(self, message: str) -> None:
        """The worker died and a new one is starting: fail what ran, refuse until it is ready."""
        self.fail_all(message)
        self.worker_error = f"{message}; a new worker is starting, retry later"
        self._ready = asyncio.get_running_loop().create_future()

    async def wait_for_worker(self, alive: Callable[[], bool], timeout: float) -> protocol.WorkerReady:
        """The restarted worker's WorkerReady; RuntimeError if it exits or `timeout` passes first."""
        assert self._ready is not None, "call worker_restarting first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return await asyncio.wait_for(asyncio.shield(self._ready), 0.5)
            except asyncio.TimeoutError:
                if not alive():
                    raise RuntimeError("the restarted worker exited before it was ready") from None
        raise RuntimeError(f"the restarted worker was not ready within {timeout:.0f}s")

    def worker_restarted(self, pid: int) -> None:
        self.worker_pid = pid
        self.worker_error = None
        self._ready = None
        self.metrics.restarts.inc()
