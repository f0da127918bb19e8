"""One radixrt replica as a Ray Serve deployment: the scheduler loop and model in this process.

Why in-process rather than a `radixrt serve` subprocess per replica: the ingress already tokenizes,
applies chat templates, checks limits and detokenizes (it is radixrt's own Frontend), so a replica
only needs the worker's half, TokenizedRequest in and TokenOut back. In-process, those cross one
Ray call instead of HTTP plus ZMQ, Ray Serve sees the replica's real health (a dead scheduler fails
`check_health`, a dead process is an actor death) and restarts it, and the replica's radix tree is
right here to publish block hashes from. Messages cross Ray as msgpack bytes of the protocol's
Structs, decoded by typed decoders like every other radixrt boundary.

`generate` streams: first `Started` (which replica took it: the ingress retries elsewhere only
while nothing else came), then the request's TokenBatch / ErrorOut messages. A cancelled call
(client gone, ingress abort) aborts the request in the scheduler, so its slots return.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from array import array
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from radixrt.cluster.messages import ControlReply, Started, control_decoder, encode
from radixrt.cluster.routing import RouteKey
from radixrt.radix_cache.block_index import BlockIndex
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.protocol import Abort, ErrorOut, StatsOut, TokenBatch, TokenizedRequest, WorkerReady
from radixrt.runtime.scheduler.in_process_io import InProcessIO

logger = logging.getLogger("radixrt.cluster")

_request_decoder = msgspec.msgpack.Decoder(TokenizedRequest)


class Replica:
    """The deployment's class (launcher.py wraps it with `serve.deployment`)."""

    def __init__(self, server_args: dict[str, Any], block_tokens: int, max_published_blocks: int, threads: int):
        from ray import serve

        self.replica = serve.get_replica_context().replica_id.unique_id
        self.args = ServerArgs.from_kwargs(**server_args)
        self.max_published_blocks = max_published_blocks
        self.blocks = BlockIndex(block_tokens)
        self.io = InProcessIO()
        self.failure: str | None = None
        self._routes: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._control: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()
        self._lock = threading.Lock()
        self._published: tuple[int, bytes] = (-1, b"")
        started: queue.Queue[Any] = queue.Queue()
        self._loop = threading.Thread(target=self._run, args=(threads, started), name="radixrt-scheduler", daemon=True)
        self._loop.start()
        ready = started.get()
        if isinstance(ready, BaseException):
            raise ready
        self.ready: WorkerReady = ready
        threading.Thread(target=self._route_outputs, name="radixrt-outputs", daemon=True).start()
        logger.info("replica %s ready (pid %d, %d KV slots)", self.replica, os.getpid(), ready.kv_slots)

    # ---- Ray Serve calls ---------------------------------------------------------------------

    def info(self) -> bytes:
        return encode(self.ready)

    async def generate(self, request: bytes, route: RouteKey | None = None) -> AsyncIterator[bytes]:
        req = _request_decoder.decode(request)
        q: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if req.rid in self._routes:
                raise ValueError(f"rid {req.rid!r} is already running on replica {self.replica}")
            self._routes[req.rid] = (asyncio.get_running_loop(), q)
        finished = False
        try:
            yield encode(Started(replica=self.replica))
            if self.failure is not None:
                yield encode(ErrorOut(rid=req.rid, status=503, message=self.failure))
                finished = True
                return
            self.io.inbox.put(req)
            while not finished:
                msg = await q.get()
                finished = isinstance(msg, ErrorOut) or any(o.finish_reason is not None for o in msg.outs)
                yield encode(msg)
        finally:
            with self._lock:
                self._routes.pop(req.rid, None)
            if not finished:
                self.io.inbox.put(Abort(rid=req.rid))

    async def control(self, request: bytes, route: RouteKey | None = None) -> bytes:
        msg = control_decoder.decode(request)
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            self._control.append((asyncio.get_running_loop(), future))
            self.io.inbox.put(msg)  # under the lock: answers come back in the order asked
        stats = await future
        stats = {**stats, "replica": self.replica, "replica_pid": os.getpid(), "blocks_held": len(self.blocks)}
        return encode(ControlReply(replica=self.replica, stats=stats))

    def record_routing_stats(self) -> dict[str, Any]:
        version, packed = self._published
        if version != self.blocks.version:
            version, hashes = self.blocks.snapshot(self.max_published_blocks)
            packed = array("Q", hashes).tobytes()
            self._published = (version, packed)
        return {"replica": self.replica, "version": version, "blocks": packed}

    def check_health(self) -> None:
        if self.failure is not None:
            raise RuntimeError(self.failure)

    def __del__(self) -> None:
        self.io.close()

    # ---- the scheduler's thread and its outputs -----------------------------------------------

    def _run(self, threads: int, started: queue.Queue) -> None:
        import torch

        from radixrt.runtime.scheduler.loop import Scheduler

        try:
            scheduler = Scheduler(self.args, self.io)
            scheduler.cache.follow_blocks(self.blocks)
            torch.set_num_threads(threads)
            started.put(self.io.outbox.get())  # the WorkerReady the scheduler sent
        except BaseException as exc:  # noqa: BLE001 - handed to __init__, which raises it
            started.put(exc)
            return
        try:
            scheduler.run_forever()
        except BaseException as exc:  # noqa: BLE001 - every waiting request must hear of it
            logger.exception("replica %s: the scheduler failed", self.replica)
            self.failure = f"replica {self.replica}: the scheduler failed: {exc}"
            self.io.outbox.put(None)

    def _route_outputs(self) -> None:
        while (msg := self.io.outbox.get()) is not None:
            if isinstance(msg, TokenBatch):
                for out in msg.outs:
                    self._deliver(out.rid, TokenBatch(outs=[out]))
            elif isinstance(msg, ErrorOut):
                self._deliver(msg.rid, msg)
            elif isinstance(msg, StatsOut):
                with self._lock:
                    loop, future = self._control.popleft()
                loop.call_soon_threadsafe(_resolve, future, msg.stats)
        self._fail_all()

    def _deliver(self, rid: str, msg: Any) -> None:
        with self._lock:
            route = self._routes.get(rid)
        if route is not None:
            loop, q = route
            loop.call_soon_threadsafe(q.put_nowait, msg)

    def _fail_all(self) -> None:
        with self._lock:
            routes = list(self._routes.items())
            waiting = list(self._control)
            self._control.clear()
        for rid, (loop, q) in routes:
            loop.call_soon_threadsafe(q.put_nowait, ErrorOut(rid=rid, status=503, message=self.failure or "stopped"))
        for loop, future in waiting:
            loop.call_soon_threadsafe(_fail, future, RuntimeError(self.failure or "stopped"))


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
