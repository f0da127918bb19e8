"""The ingress's Frontend: radixrt's own, with control calls fanned out to every replica and merged."""

from __future__ import annotations

from typing import Any

from radixrt.cluster.link import ClusterLink
from radixrt.runtime import protocol
from radixrt.runtime.server.frontend import Frontend
from radixrt.runtime.server.tokenizer_manager import TokenizerManager

NOT_SUMMED = ("worker_pid", "replica_pid")


class ClusterFrontend(Frontend):
    def __init__(self, link: ClusterLink, tm: TokenizerManager):
        super().__init__(link, tm)  # type: ignore[arg-type]
        self.cluster = link

    async def control(self, msg: protocol.WorkerInMsg, timeout: float) -> dict[str, Any]:
        self.check_worker()
        replies = await self.cluster.control(msg, timeout)
        per_replica = {r.replica: r.stats for r in replies}
        if isinstance(msg, protocol.FlushCache):
            return {"flushed": all(s.get("flushed") for s in per_replica.values()), "replicas": per_replica}
        if isinstance(msg, protocol.DebugCache):
            return {"tree": merge_trees(per_replica)}
        return {**sum_stats(list(per_replica.values())), "replicas": per_replica}

    def frontend_stats(self) -> dict[str, Any]:
        return {**super().frontend_stats(), "cluster": dict(self.cluster.counters)}


def sum_stats(all_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers summed over the replicas (slots, counters, seconds), anything else the first one's."""
    total: dict[str, Any] = {}
    for stats in all_stats:
        for key, value in stats.items():
            if key in NOT_SUMMED:
                continue
            if isinstance(value, dict):
                total[key] = sum_stats([total.get(key, {}), value]) if isinstance(total.get(key, {}), dict) else value
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and key in total:
                total[key] += value
            else:
                total.setdefault(key, value)
    return total


def merge_trees(trees: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One picture of all the replicas' trees (cache_svg's snapshot shape) under a common root."""
    nodes = [{"parent": -1, "depth": 0, "tokens": 0, "text": "<cluster>", "hits": 0, "lock": 0}]
    total_nodes = total_tokens = 0
    truncated = False
    for replica, answer in sorted(trees.items()):
        tree = answer.get("tree", {})
        base = len(nodes)
        for i, node in enumerate(tree.get("nodes", [])):
            parent = 0 if node["parent"] == -1 else base + node["parent"] if node["parent"] >= 0 else node["parent"]
            text = f"<replica {replica}>" if i == 0 else node["text"]
            nodes.append({**node, "parent": parent, "depth": node["depth"] + 1, "text": text})
        total_nodes += tree.get("total_nodes", 0) + 1
        total_tokens += tree.get("total_tokens", 0)
        truncated = truncated or bool(tree.get("truncated"))
    return {"nodes": nodes, "total_nodes": total_nodes, "total_tokens": total_tokens, "truncated": truncated}
