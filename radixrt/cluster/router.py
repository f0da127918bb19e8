"""The Ray Serve `RequestRouter` that routes by the replicas' real radix trees (routing.py decides).

It runs inside the ingress process (a DeploymentHandle's router), reads each replica's published
block hashes from its `routing_stats` (the replica's `record_routing_stats`) and its in-flight count
from Ray Serve's queue-length cache, and answers `choose_replicas` with the chosen replica first
and the others as a fallback rank (taken only when the first is at `max_ongoing_requests`).

`REPLICAS` is this process's view of the live replicas, shared with the ingress's ClusterLink: the
link fans control calls (stats, flush) out to every replica by id and reports replicas whose calls
failed, which the router then leaves out until Ray Serve replaces them.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from radixrt.cluster.routing import ReplicaView, RouteKey, RouteTable, RoutingConfig

logger = logging.getLogger("radixrt.cluster")


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


def decode_blocks(stats: dict[str, Any]) -> frozenset[int]:
    raw = stats.get("blocks", b"")
    blocks = array("Q")
    blocks.frombytes(raw if isinstance(raw, bytes) else b"")
    return frozenset(blocks)


class RadixTreeRouter(RequestRouter):
    """`request_router_kwargs` are RoutingConfig's fields."""

    def initialize_state(self, **kwargs: Any) -> None:
        self.table = RouteTable(RoutingConfig(**kwargs))
        self._held: dict[str, tuple[Any, frozenset[int]]] = {}  # replica -> (version, hashes)
        self.decisions: dict[str, int] = {}

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        ids = {r.replica_id.unique_id for r in replicas}
        for gone in set(self._held) - ids:
            self._held.pop(gone, None)
            self.table.forget_replica(gone)
        REPLICAS.update(self.app_name, list(ids))

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        failed = REPLICAS.failed()
        alive = [r for r in candidate_replicas if r.replica_id.unique_id not in failed] or candidate_replicas
        key = (pending_request.kwargs.get("route") if pending_request is not None else None) or RouteKey()
        views = [self._view(r) for r in alive]
        choice = self.table.choose(key, views)
        self.decisions[choice.reason] = self.decisions.get(choice.reason, 0) + 1
        first = [r for r in alive if r.replica_id.unique_id == choice.replica]
        if key.target is not None:
            return [first]
        return [first, [r for r in alive if r.replica_id.unique_id != choice.replica]]

    def _view(self, replica: RunningReplica) -> ReplicaView:
        rid = replica.replica_id.unique_id
        stats = replica.routing_stats or {}
        version = stats.get("version")
        cached = self._held.get(rid)
        if cached is None or cached[0] != version:
            cached = (version, decode_blocks(stats))
            self._held[rid] = cached
        load = self.replica_queue_len_cache.get(replica.replica_id)
        if load is None:
            load = int(stats.get("running", 0)) + int(stats.get("waiting", 0))
        return ReplicaView(rid, load, cached[1])
