"""Thread-safe ZMQ client of a radixrt frontend: one DEALER socket, one background I/O thread.

Any thread may call `call` / `stream` / `abort`. Requests are queued to the I/O thread (the only
thread touching the socket), woken through a socketpair. Replies are routed by `rid` to a
per-request queue. Rid-less replies answer control requests by type (ModelInfo for GetModelInfo,
Ack for FlushCache, StatsReply for GetStats), oldest first: the server may answer different
control calls out of order. A frame the typed decoder rejects is logged and dropped.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections import deque
from collections.abc import Iterator

import msgspec
import zmq

from radixrt.errors import RadixRTError, error_for_status
from radixrt.runtime import protocol
from radixrt.runtime.protocol import (
    AbortRequest,
    ErrorReply,
    GenerateResult,
    ScoreResult,
)

logger = logging.getLogger(__name__)

_TERMINAL = (GenerateResult, ScoreResult, ErrorReply)
_CONTROL_REPLY = {
    protocol.GetModelInfo: protocol.ModelInfo,
    protocol.FlushCache: protocol.Ack,
    protocol.GetStats: protocol.StatsReply,
}


def error_from_reply(reply: ErrorReply) -> RadixRTError:
    """The exception a server ErrorReply stands for, carrying its message, status and param."""
    return error_for_status(reply.status, reply.message, reply.param)


class ClientClosed(RadixRTError):
    status = 503
    kind = "client_closed"


class RuntimeClient:
    """Talks to a radixrt frontend's ROUTER socket at `address` (tcp://... or ipc://...).

    `timeout`: seconds to wait for each reply message (None waits forever); on a timeout the
    request is aborted on the server and TimeoutError is raised. `api_key` is stamped on every
    message that does not carry one.
    """

    def __init__(self, address: str, timeout: float | None = None, api_key: str | None = None):
        self.address, self.timeout, self.api_key = address, timeout, api_key
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(address)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a full buffer means "already woken", never a wait
        self._encoder = protocol.encoder()
        self._decoder = protocol.decoder(protocol.ServerMsg)
        self._lock = threading.Lock()
        self._outbox: deque[bytes] = deque()
        self._pending: dict[str, queue.SimpleQueue] = {}
        self._control: deque[tuple[type, queue.SimpleQueue]] = deque()  # (reply type, waiter)
        self._closed = False
        self._thread = threading.Thread(target=self._io_loop, name="radixrt-client-io", daemon=True)
        self._thread.start()

    # ---- public API ------------------------------------------------------------------------

    def call(self, msg: protocol.ClientMsg, timeout: float | None = None) -> protocol.ServerMsg:
        """Send one request and return its final reply; an ErrorReply raises its RadixRTError."""
        rid = getattr(msg, "rid", None)
        waiter = self._submit(msg)
        return self._next(waiter, rid, timeout)

    def stream(self, msg: protocol.GenerateRequest, timeout: float | None = None) -> Iterator[protocol.ServerMsg]:
        """Yield a streaming request's GenerateChunks, then its GenerateResult.

        Closing the iterator early aborts the request on the server.
        """
        waiter = self._submit(msg)
        done = False
        try:
            while not done:
                reply = self._next(waiter, msg.rid, timeout)
                done = isinstance(reply, GenerateResult)
                yield reply
        finally:
            if not done:
                self.abort(msg.rid)

    def abort(self, rid: str) -> None:
        """Ask the server to stop `rid` if it is still running; its later replies are dropped."""
        with self._lock:
            running = self._pending.pop(rid, None) is not None and not self._closed
        if running:
            self._submit(AbortRequest(rid=rid))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiters = list(self._pending.values()) + [w for _, w in self._control]
            self._pending.clear()
            self._control.clear()
        for w in waiters:
            w.put(ClientClosed("the client was closed"))
        self._wake()
        self._thread.join(timeout=5)
        self._sock.close()
        self._ctx.term()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> RuntimeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- caller side -----------------------------------------------------------------------

    def _submit(self, msg: protocol.ClientMsg) -> queue.SimpleQueue | None:
        waiter = None if isinstance(msg, AbortRequest) else queue.SimpleQueue()
        if self.api_key is not None and msg.api_key is None:
            msg = msgspec.structs.replace(msg, api_key=self.api_key)
        with self._lock:
            if self._closed:
                raise ClientClosed("the client was closed")
            frame = self._encoder.encode(msg)
            rid = getattr(msg, "rid", None)
            if waiter is not None and rid is not None:
                self._pending[rid] = waiter
            elif waiter is not None:
                self._control.append((_CONTROL_REPLY[type(msg)], waiter))
            self._outbox.append(frame)
        self._wake()
        return waiter

    def _next(self, waiter: queue.SimpleQueue, rid: str | None, timeout: float | None) -> protocol.ServerMsg:
        wait = self.timeout if timeout is None else timeout
        try:
            reply = waiter.get(timeout=wait)
        except queue.Empty:
            if rid is not None:
                self.abort(rid)
            raise TimeoutError(f"no reply from {self.address} within {wait}s (rid={rid})") from None
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, ErrorReply):
            raise error_from_reply(reply)
        return reply

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # the I/O thread is already woken (buffer full) or gone (closed)

    # ---- I/O thread ------------------------------------------------------------------------

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        wake_fd = self._wake_r.fileno()
        poller.register(wake_fd, zmq.POLLIN)  # NOTE: poll() reports plain sockets by fd
        while True:
            with self._lock:
                if self._closed:
                    return
                blocked = self._flush_outbox()
            events = dict(poller.poll(10 if blocked else None))
            if wake_fd in events:
                self._drain_wake()
            if self._sock in events:
                self._receive_all()

    def _flush_outbox(self) -> bool:
        """Send queued frames (lock held). True when the socket would block (peer not ready)."""
        while self._outbox:
            try:
                self._sock.send(self._outbox[0], zmq.NOBLOCK)
            except zmq.Again:
                return True
            self._outbox.popleft()
        return False

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _receive_all(self) -> None:
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._dispatch(frames[-1])

    def _dispatch(self, frame: bytes) -> None:
        try:
            msg = self._decoder.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            logger.warning("dropping a malformed frame from %s (%d bytes): %s", self.address, len(frame), e)
            return
        rid = getattr(msg, "rid", None)
        with self._lock:
            if rid is not None and rid in self._pending:
                waiter = self._pending.pop(rid) if isinstance(msg, _TERMINAL) else self._pending[rid]
            elif rid is None or (isinstance(msg, ErrorReply) and not rid):
                waiter = self._pop_control(msg)
            else:
                logger.debug("dropping a reply for unknown or finished rid %r", rid)
                return
        if waiter is None:
            logger.warning("dropping a %s that answers no waiting control request", type(msg).__name__)
            return
        waiter.put(msg)

    def _pop_control(self, msg: protocol.ServerMsg) -> queue.SimpleQueue | None:
        """The oldest control waiter this reply answers (any one, for a rid-less error); lock held."""
        for i, (reply_type, waiter) in enumerate(self._control):
            if isinstance(msg, (reply_type, ErrorReply)):
                del self._control[i]
                return waiter
        return None
