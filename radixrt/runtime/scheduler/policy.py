"""Waiting-queue order: lpm (longest prefix match), dfs-weight, fcfs.

Starvation bound (all policies): a request that has waited `max_wait_passes` scheduling
passes goes ahead of every request that has not, oldest first. So under a stream of
cache-hitting requests, a request that shares nothing is admitted within that many passes
(plus the passes needed for memory to free up).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from radixrt.runtime.scheduler.req import Req

PrefixLen = Callable[[Req], int]  # cached prefix length of a waiting request
PrefixPath = Callable[[Req], tuple[int, ...]]  # ids of the tree nodes that prefix runs through, root first


def order_waiting(
    policy: str, waiting: Sequence[Req], prefix_len: PrefixLen, prefix_path: PrefixPath, max_wait_passes: int
) -> list[Req]:
    """Return `waiting` in admission order. `prefix_len` and `prefix_path` are lookups that
    change nothing (the cache manager's), asked only by the prefix-aware policies."""
    starved = sorted((r for r in waiting if r.wait_passes >= max_wait_passes), key=lambda r: r.arrival)
    rest = [r for r in waiting if r.wait_passes < max_wait_passes]
    if policy == "fcfs":
        rest.sort(key=lambda r: r.arrival)
    elif policy == "lpm":
        rest.sort(key=lambda r: (-prefix_len(r), r.arrival))
    elif policy == "dfs-weight":
        rest = _dfs_weight(rest, prefix_len, prefix_path)
    else:
        raise ValueError(f"unknown schedule policy {policy!r}")
    return starved + rest


def _dfs_weight(reqs: list[Req], prefix_len: PrefixLen, prefix_path: PrefixPath) -> list[Req]:
    """SGLang's dfs-weight: walk the tree depth first, heavier subtrees (more waiting requests
    below) first, emitting requests at the node where their cached prefix ends.

    Requests ending inside one node's edge go shortest prefix first, as if the edge were split
    there; equally heavy subtrees go oldest waiting request first.
    """
    weight: Counter[int] = Counter()
    oldest: dict[int, int] = {}
    kids: defaultdict[int | None, set[int]] = defaultdict(set)
    ends: defaultdict[int, list[Req]] = defaultdict(list)
    for r in reqs:
        path = prefix_path(r)
        ends[path[-1]].append(r)
        for parent, node in zip((None, *path), path):
            kids[parent].add(node)
            weight[node] += 1
            oldest[node] = min(oldest.get(node, r.arrival), r.arrival)

    def heaviest_last(nodes: set[int]) -> list[int]:
        return sorted(nodes, key=lambda n: (weight[n], -oldest[n]))

    out: list[Req] = []
    stack = heaviest_last(kids[None])
    while stack:
        node = stack.pop()
        out.extend(sorted(ends[node], key=lambda r: (prefix_len(r), r.arrival)))
        stack.extend(heaviest_last(kids[node]))
    return out
