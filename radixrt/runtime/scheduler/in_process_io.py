"""The in-process seam: the scheduler's receive/send over in-memory queues (no sockets)."""

from __future__ import annotations

import queue
from typing import Any


class InProcessIO:
    """`recv(timeout)` drains the inbox (blocking up to `timeout` when it is empty; None waits
    forever) and returns None once `close()` was called; `send` puts on the outbox."""

    _CLOSE = object()

    def __init__(self) -> None:
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.outbox: queue.Queue[Any] = queue.Queue()

    def recv(self, timeout: float | None) -> list[Any] | None:
        msgs: list[Any] = []
        try:
            first = self.inbox.get(timeout=timeout) if timeout != 0 else self.inbox.get_nowait()
        except queue.Empty:
            return msgs
        for msg in [first] + self._drain():
            if msg is self._CLOSE:
                return None
            msgs.append(msg)
        return msgs

    def _drain(self) -> list[Any]:
        out = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    def send(self, msg: Any) -> None:
        self.outbox.put(msg)

    def close(self) -> None:
        self.inbox.put(self._CLOSE)
