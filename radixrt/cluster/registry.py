"""The live replicas of each application, as this process's router sees them (thread-safe)."""

from __future__ import annotations

import threading
import time


class ReplicaRegistry:
    """Live replica ids per application, and the ones seen failing (thread-safe).

    A failure mark lasts `FAILED_FOR_S`: a dead replica is replaced (a new id) well before, and a
    replica whose call failed for another reason gets requests again afterwards.
    """

    FAILED_FOR_S = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, list[str]] = {}
        self._failed: dict[str, float] = {}  # replica -> until (monotonic)

    def update(self, app: str, replicas: list[str]) -> None:
        with self._lock:
            self._live[app] = sorted(replicas)

    def live(self, app: str) -> list[str]:
        failed = self.failed()
        with self._lock:
            return [r for r in self._live.get(app, []) if r not in failed]

    def mark_failed(self, replica: str) -> None:
        with self._lock:
            self._failed[replica] = time.monotonic() + self.FAILED_FOR_S

    def failed(self) -> set[str]:
        now = time.monotonic()
        with self._lock:
            self._failed = {r: until for r, until in self._failed.items() if until > now}
            return set(self._failed)


REPLICAS = ReplicaRegistry()
