"""The Ray Serve `RequestRouter` that routes by the replicas' real radix trees (routing.py decides).

It runs inside the ingress process (a DeploymentHandle's router), reads each replica's published
block hashes from its `routing_stats` (the replica's `record_routing_stats`) and its in-flight count
from Ray Serve's queue-length cache, and answers `choose_replicas` with the chosen replica.

`registry.REPLICAS` is this process's view of the live replicas, shared with the ingress's
ClusterLink: the link fans control calls (stats, flush) out to every replica by id and reports
replicas whose calls failed, which the router then leaves out until Ray Serve replaces them.
NOTE: Ray Serve pickles this module by value into the router, so shared state lives in another
module, reached through the module object (pickled by name: the ingress's own instance).
"""

from __future__ import annotations

import logging
from array import array
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from radixrt.cluster import registry
from radixrt.cluster.routing import ReplicaView, RouteKey, RouteTable, RoutingConfig

logger = logging.getLogger("radixrt.cluster")


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
        registry.REPLICAS.update(self.app_name, list(ids))

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        failed = registry.REPLICAS.failed()
        alive = [r for r in candidate_replicas if r.replica_id.unique_id not in failed] or candidate_replicas
        key = (pending_request.kwargs.get("route") if pending_request is not None else None) or RouteKey()
        views = [self._view(r) for r in alive]
        choice = self.table.choose(key, views)
        self.decisions[choice.reason] = self.decisions.get(choice.reason, 0) + 1
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # a full or slow replica: retry later
        # NOTE: the choice alone, no fallback rank: Ray Serve passes to the next rank whenever a
        # queue-length probe misses its 0.1 s deadline, which on a busy machine would scatter a
        # program or a prefix; a replica that is really full loses to the load fallback next time.
        return [[r for r in alive if r.replica_id.unique_id == choice.replica]]

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
