"""The frontend <-> worker link: two ZMQ PUSH/PULL pipes over ipc:// sockets in a private dir.

The frontend binds both ends (it outlives the worker); the worker connects. Every frame is one
msgpack-encoded protocol Struct, decoded against the receiving side's union only, so a malformed
frame is logged and dropped instead of reaching the scheduler or the request table.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import msgspec
import zmq
import zmq.asyncio

from radixrt.runtime import protocol
from radixrt.runtime.protocol import WorkerInMsg, WorkerOutMsg

logger = logging.getLogger(__name__)

POLL_SLICE_MS = 200  # a blocked worker still notices shutdown and a dead parent this often


class WorkerAddresses(NamedTuple):
    to_worker: str
    from_worker: str

    @classmethod
    def in_dir(cls, ipc_dir: str | Path) -> WorkerAddresses:
        return cls(f"ipc://{Path(ipc_dir) / 'to_worker'}", f"ipc://{Path(ipc_dir) / 'from_worker'}")


def decode_or_drop(decoder: msgspec.msgpack.Decoder, frame: bytes, side: str) -> object | None:
    """The decoded Struct, or None (logged) when the frame is not one of the decoder's types."""
    try:
        return decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as e:
        logger.warning("%s: dropped a malformed frame (%d bytes): %s", side, len(frame), e)
        return None


class ZmqWorkerIO:
    """Worker side: `recv(timeout)` drains every pending message, `send(msg)` never blocks.

    `recv` returns None (the scheduler's stop signal) once `stop_requested` is set (from a
    signal handler) or the parent process is gone, so the loop stops between steps, never in one.
    """

    def __init__(self, addresses: WorkerAddresses, parent_pid: int | None = None):
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.connect(addresses.to_worker)
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDHWM, 0)
        self.push.connect(addresses.from_worker)
        self.parent_pid = parent_pid
        self.stop_requested = False
        self.serving = False  # set by the first recv: the model is loaded and the loop runs
        self._encoder = protocol.encoder()
        self._decoder = protocol.decoder(WorkerInMsg)

    def recv(self, timeout: float | None) -> list[WorkerInMsg] | None:
        """Messages that arrived; waits up to `timeout` seconds (None: until one arrives)."""
        self.serving = True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.should_stop():
                return None
            left_ms = POLL_SLICE_MS if deadline is None else int((deadline - time.monotonic()) * 1000)
            if self.pull.poll(max(0, min(POLL_SLICE_MS, left_ms))):
                msgs = self._drain()
                if msgs or deadline is None:
                    return msgs
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def _drain(self) -> list[WorkerInMsg]:
        msgs = []
        while True:
            try:
                frame = self.pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return msgs
            msg = decode_or_drop(self._decoder, frame, "worker")
            if msg is not None:
                msgs.append(msg)

    def should_stop(self) -> bool:
        orphaned = self.parent_pid is not None and os.getppid() != self.parent_pid
        if orphaned:
            logger.warning("the frontend process is gone; stopping")
        return self.stop_requested or orphaned

    def send(self, msg: WorkerOutMsg) -> None:
        self.push.send(self._encoder.encode(msg))

    def close(self) -> None:
        self.pull.close(linger=0)
        self.push.close(linger=1000)  # let the last outputs leave
        self.ctx.term()


class FrontendWorkerLink:
    """Frontend side (asyncio): binds the ipc:// pipes the worker connects to."""

    def __init__(self, addresses: WorkerAddresses):
        self.ctx = zmq.asyncio.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDHWM, 0)
        self.push.bind(addresses.to_worker)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.bind(addresses.from_worker)
        self._encoder = protocol.encoder()
        self._decoder = protocol.decoder(WorkerOutMsg)

    def send(self, msg: WorkerInMsg) -> bool:
        """Queue `msg` for the worker without waiting; False when no worker is connected.

        Synchronous on purpose: aborts are sent from cancelled tasks, where an await would not run.
        """
        sent = self.push.send(self._encoder.encode(msg), zmq.NOBLOCK)  # a done future
        if sent.exception() is not None:
            logger.warning("could not send %s to the worker: %s", type(msg).__name__, sent.exception())
            return False
        return True

    async def recv(self) -> WorkerOutMsg:
        """The next well-formed message from the worker."""
        while True:
            msg = decode_or_drop(self._decoder, await self.pull.recv(), "frontend")
            if msg is not None:
                return msg

    async def wait_ready(self, worker_alive: Callable[[], bool], timeout: float) -> protocol.WorkerReady:
        """Wait for WorkerReady; raise RuntimeError if the worker exits or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.pull.poll(500):
                msg = await self.recv()
                if isinstance(msg, protocol.WorkerReady):
                    return msg
                logger.warning("ignoring %s before WorkerReady", type(msg).__name__)
            elif not worker_alive():
                raise RuntimeError("the worker process exited before it was ready")
        raise RuntimeError(f"the worker was not ready within {timeout:.0f}s")

    def close(self) -> None:
        self.push.close(linger=0)
        self.pull.close(linger=0)
        self.ctx.term()
