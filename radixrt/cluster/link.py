"""The ingress's side of the replicas: radixrt's Frontend over Ray Serve instead of one worker.

`ClusterLink` has the worker link's shape (`send` a TokenizedRequest or Abort, `recv` the
TokenBatch / ErrorOut messages), so the Frontend, the HTTP app and the OpenAI routes run unchanged
on top of it: the ingress tokenizes once, the replicas only compute.

Each request is one streaming call to the deployment, routed by RadixTreeRouter with the request's
block hashes and program key. Faults: when a replica dies (or its call fails) before anything of the
request reached the Frontend, the request is sent again, to another replica (at most
`max_attempts` tries); once output was delivered it ends with a 503 error event saying so. A
non-streaming request delivers nothing until it finishes, so it is retried at any point. Control
calls (stats, flush, the cache picture) go to every live replica by id, and the answers are merged.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from typing import Any

import msgspec

from radixrt.cluster.messages import ControlReply, Started, encode, reply_decoder, stream_decoder
from radixrt.cluster.registry import REPLICAS
from radixrt.cluster.routing import RouteKey
from radixrt.errors import Overloaded
from radixrt.radix_cache.block_index import block_hashes
from radixrt.runtime.protocol import Abort, ErrorOut, TokenBatch, TokenizedRequest

logger = logging.getLogger("radixrt.cluster")

REPLICA_WAIT_S = 30.0  # how long a control call waits for the router to learn the replicas


class ClusterLink:
    def __init__(self, handle: Any, app_name: str, block_tokens: int, max_attempts: int = 3):
        self.handle = handle
        self.app_name = app_name
        self.block_tokens = block_tokens
        self.max_attempts = max_attempts
        self.ingress_id = uuid.uuid4().hex[:8]  # rids are unique per ingress; replicas may serve several
        self.counters: Counter[str] = Counter()
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self._tasks: dict[str, asyncio.Task] = {}

    # ---- the worker link's interface ---------------------------------------------------------

    def send(self, msg: Any) -> None:
        if isinstance(msg, TokenizedRequest):
            task = asyncio.ensure_future(self._serve(msg))
            self._tasks[msg.rid] = task
            task.add_done_callback(lambda _t, rid=msg.rid: self._tasks.pop(rid, None))
        elif isinstance(msg, Abort):
            task = self._tasks.pop(msg.rid, None)
            if task is not None:
                task.cancel()  # cancels the replica call, which aborts the request there
        else:
            raise TypeError(f"ClusterLink cannot send {type(msg).__name__}; control calls use control()")

    async def recv(self) -> Any:
        return await self._out.get()

    def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()

    # ---- requests ---------------------------------------------------------------------------

    async def _serve(self, req: TokenizedRequest) -> None:
        blocks = tuple(block_hashes(req.input_ids, self.block_tokens, req.cache_salt))
        payload = encode(msgspec.structs.replace(req, rid=f"{self.ingress_id}/{req.rid}"))
        avoid, error = (), ""
        for attempt in range(self.max_attempts):
            replica, delivered, held = None, False, []
            route = RouteKey(blocks=blocks, program=req.program_id, avoid=avoid)
            call = self.handle.options(stream=True).generate.remote(payload, route=route)
            try:
                async for raw in call:
                    msg = stream_decoder.decode(raw)
                    if isinstance(msg, Started):
                        replica = msg.replica
                        continue
                    _own_rid(msg, req.rid)
                    final = isinstance(msg, ErrorOut) or any(o.finish_reason is not None for o in msg.outs)
                    if final and isinstance(msg, TokenBatch):
                        for out in msg.outs:  # meta_info["replica"]: which replica served it
                            out.extra = {**(out.extra or {}), "replica": replica}
                    if req.stream or final:
                        for early in held:
                            self._out.put_nowait(early)
                        self._out.put_nowait(msg)
                        delivered = True
                    else:
                        held.append(msg)  # nothing reaches the client before the end anyway
                    if final:
                        self.counters["retried_requests_served" if attempt else "requests_served"] += 1
                        return
                error = f"replica {replica} ended the stream without a result"
            except asyncio.CancelledError:
                call.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the call is the replica's
                error = f"replica {replica or '(not started)'} failed: {type(exc).__name__}: {exc}"
            if replica is not None:
                REPLICAS.mark_failed(replica)
                avoid = (*avoid, replica)
            if delivered:
                self.counters["failed_mid_stream"] += 1
                message = f"{error}; the request had streamed output already, so it was not retried"
                self._out.put_nowait(ErrorOut(rid=req.rid, status=503, message=message))
                return
            self.counters["retries"] += 1
            logger.warning("request %s: %s; retrying on another replica (attempt %d)", req.rid, error, attempt + 2)
        self.counters["failed_after_retries"] += 1
        message = f"{error}; gave up after {self.max_attempts} attempts"
        self._out.put_nowait(ErrorOut(rid=req.rid, status=503, message=message))

    # ---- control ----------------------------------------------------------------------------

    async def control(self, msg: Any, timeout: float) -> list[ControlReply]:
        """Every live replica's answer to `msg` (GetStats, FlushCache, DebugCache); raises
        Overloaded when none answers within `timeout`."""
        replicas = await self._live_replicas(min(timeout, REPLICA_WAIT_S))
        payload = encode(msg)
        calls = [self.handle.control.remote(payload, route=RouteKey(target=r)) for r in replicas]
        done = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout)
        answers: dict[str, ControlReply] = {}
        for raw in done:
            if isinstance(raw, BaseException):
                logger.warning("a replica did not answer %s: %s", type(msg).__name__, raw)
                continue
            reply = reply_decoder.decode(raw)
            answers.setdefault(reply.replica, reply)
        if not answers:
            raise Overloaded(f"no replica answered {type(msg).__name__}")
        return [answers[r] for r in sorted(answers)]

    async def _live_replicas(self, wait: float) -> list[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not (replicas := REPLICAS.live(self.app_name)):
            if loop.time() > deadline:
                raise Overloaded("no replica is running; retry later")
            await asyncio.sleep(0.05)
        return replicas


def _own_rid(msg: TokenBatch | ErrorOut, rid: str) -> None:
    """Back from the replica's rid (prefixed with this ingress's id) to the Frontend's."""
    if isinstance(msg, ErrorOut):
        msg.rid = rid
    else:
        for out in msg.outs:
            out.rid = rid
