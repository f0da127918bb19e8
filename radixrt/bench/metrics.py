"""Figures of one run: throughput, latency percentiles, and the optimal prefix-cache hit rate.

Optimal hit rate: replay the requests in the order they were sent through an ideal, infinite
prefix cache that holds every earlier prompt and output. A request reuses its longest cached
prefix, capped like the server caps it (the last prompt token is always computed; a scored
continuation's logprob rows are computed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from radixrt.bench.recording import Call
from radixrt.token_ids import common_prefix_len

_MOD = (1 << 61) - 1  # a Mersenne prime: prefix hashes collide with negligible probability
_BASE = 1_000_003


@dataclass(frozen=True)
class TraceRequest:
    ids: list[int]
    reusable: int  # how many leading tokens may come from a cache at most
    inserted: list[int]  # what the request leaves in the cache (prompt + output)


class PrefixSet:
    """All prefixes of the sequences inserted so far, as rolling hashes (prefix-closed)."""

    def __init__(self):
        self._hashes: set[int] = set()

    def match_len(self, ids: list[int]) -> int:
        h = 0
        for n, token in enumerate(ids):
            h = (h * _BASE + token + 1) % _MOD
            if h not in self._hashes:
                return n
        return len(ids)

    def insert(self, ids: list[int]) -> None:
        h = 0
        for token in ids:
            h = (h * _BASE + token + 1) % _MOD
            self._hashes.add(h)


def token_trace(calls: list[Call], encode: Callable[[str], list[int]]) -> list[TraceRequest]:
    """Token ids of each recorded request, with its reuse cap (mirrors the server's tokenization)."""
    trace = []
    for call in calls:
        ids = encode(call.prompt)
        if call.kind == "score":
            boundary = min(common_prefix_len(encode(call.score_prefix or ""), ids), len(ids) - 1)
            trace.append(TraceRequest(ids, max(boundary - 1, 0), ids))
        else:
            trace.append(TraceRequest(ids, max(len(ids) - 1, 0), ids + call.output_ids))
    return trace


def optimal_hits(trace: list[TraceRequest]) -> tuple[int, int]:
    """(reusable prompt tokens, prompt tokens) under an ideal infinite prefix cache, in order."""
    cache = PrefixSet()
    hits = total = 0
    for req in trace:
        hits += min(cache.match_len(req.ids), req.reusable)
        total += len(req.ids)
        cache.insert(req.inserted)
    return hits, total


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b
