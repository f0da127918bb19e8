"""Waiting-queue order: lpm (longest prefix match), dfs-weight, fcfs.

Starvation bound (all policies): a request that has waited `max_wait_passes` scheduling
passes goes ahead of every request that has not, oldest first. So under a stream of
cache-hitting requests, a request that shares nothing is admitted within that many passes
(plus the passes needed for memory to free up).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from radixrt.runtime.scheduler.req import Req

PrefixLen = Callable[[Req], int]


def order_waiting(
    policy: str,
    waiting: Sequence[Req],
    prefix_len: PrefixLen,
    max_wait_passes: int,
    node_of: Callable[[Req], Any] | None = None,
) -> list[Req]:
    """Return `waiting` in admission order."""
    starved = sorted((r for r in waiting if r.wait_passes >= max_wait_passes), key=lambda r: r.arrival)
    rest = [r for r in waiting if r.wait_passes < max_wait_passes]
    if policy == "fcfs":
        rest.sort(key=lambda r: r.arrival)
    elif policy == "lpm":
        rest.sort(key=lambda r: (-prefix_len(r), r.arrival))
    elif policy == "dfs-weight":
        rest = _dfs_weight(rest, node_of)
    else:
        raise ValueError(f"unknown schedule policy {policy!r}")
    return starved + rest


def _dfs_weight(reqs: list[Req], node_of: Callable[[Req], Any] | None) -> list[Req]:
    """SGLang's dfs-weight: walk the radix tree depth first, heavier subtrees (more waiting
    requests below) first, emitting requests at the node where their cached prefix ends."""
    if node_of is None:
        return sorted(reqs, key=lambda r: r.arrival)
    by_node: dict[int, list[Req]] = {}
    nodes: dict[int, Any] = {}
    weight: dict[int, int] = {}
    for r in reqs:
        node = node_of(r)
        by_node.setdefault(id(node), []).append(r)
        while node is not None:
            nodes[id(node)] = node
            weight[id(node)] = weight.get(id(node), 0) + 1
            node = node.parent
    roots = [n for n in nodes.values() if n.parent is None]
    out: list[Req] = []
    stack = sorted(roots, key=lambda n: weight[id(n)])
    while stack:
        node = stack.pop()
        out.extend(sorted(by_node.get(id(node), []), key=lambda r: r.arrival))
        kids = [c for c in node.children.values() if id(c) in weight]
        stack.extend(sorted(kids, key=lambda n: weight[id(n)]))
    return out
