"""Which replica a request goes to: the routing policy, free of Ray so that it is unit-tested alone.

Each replica publishes the block hashes its radix tree holds (radix_cache/block_index.py); the
ingress sends each request's own block hashes along. `RouteTable.choose` then decides, in order:

1. `target`: a control call meant for one replica goes there.
2. `avoid`: replicas that already failed this request are left out (while others remain).
3. round_robin policy: the next replica in turn (the benchmark's baseline).
4. program affinity: a DSL program's requests (same `program` key) stay on the replica that served
   its first one while that replica is a candidate (healthy), whatever the load.
5. load fallback: when queues are imbalanced, (max - min) > balance_abs_threshold and
   max > balance_rel_threshold * min (SGLang's router's rule), the least-loaded replica.
6. cache affinity: the replica holding the longest prefix of the request, in whole blocks; ties
   go to the less loaded one. A request no replica holds a block of goes to the least loaded.

Published summaries arrive every `request_routing_stats_period_s`, so a prefix routed a moment ago
is not in them yet. The table remembers the blocks it sent to each replica for `pending_ttl_s`
(the replica will hold them once the request is admitted), so a burst of requests sharing a new
prefix follows the first one instead of scattering; the replicas' reports stay the truth for
everything older, evictions included.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from radixrt.radix_cache.block_index import DEFAULT_BLOCK_TOKENS

POLICIES = ("prefix", "round_robin")


@dataclass(frozen=True)
class RoutingConfig:
    policy: str = "prefix"
    balance_abs_threshold: int = 32
    balance_rel_threshold: float = 1.5
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    pending_ttl_s: float = 5.0
    max_programs: int = 100_000  # program -> replica entries kept (least recently used dropped)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown routing policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1.0:
            raise ValueError("balance_abs_threshold must be >= 0 and balance_rel_threshold >= 1")
        if self.block_tokens < 1 or self.pending_ttl_s < 0 or self.max_programs < 1:
            raise ValueError("block_tokens and max_programs must be >= 1, pending_ttl_s >= 0")


@dataclass(frozen=True)
class RouteKey:
    """What the ingress sends along with a request for the router (a keyword argument)."""

    blocks: tuple[int, ...] = ()  # the request's block hashes
    program: str | None = None  # requests of one DSL program / session
    target: str | None = None  # control calls: this replica
    avoid: tuple[str, ...] = ()  # replicas that failed this request


@dataclass(frozen=True)
class ReplicaView:
    """One candidate as the router sees it now."""

    replica: str
    load: int  # requests in flight on it
    held: frozenset[int] = frozenset()  # block hashes it last published


@dataclass(frozen=True)
class Choice:
    replica: str
    reason: str  # target | round_robin | program | balance | prefix | least_loaded
    matched_blocks: int = 0


@dataclass
class RouteTable:
    """The router's memory: recent routing per replica, program affinity, the round-robin turn."""

    config: RoutingConfig = field(default_factory=RoutingConfig)
    clock: Callable[[], float] = time.monotonic
    _pending: dict[str, dict[int, float]] = field(default_factory=dict)  # replica -> hash -> expiry
    _programs: OrderedDict[str, str] = field(default_factory=OrderedDict)
    _turn: itertools.count = field(default_factory=itertools.count)
    _next_purge: float = 0.0

    def choose(self, key: RouteKey, replicas: list[ReplicaView]) -> Choice:
        if not replicas:
            raise ValueError("no replica to choose from")
        by_id = {r.replica: r for r in replicas}
        if key.target is not None and key.target in by_id:
            return Choice(key.target, "target")
        candidates = sorted((r for r in replicas if r.replica not in key.avoid), key=lambda r: r.replica)
        candidates = candidates or sorted(replicas, key=lambda r: r.replica)
        choice = self._decide(key, candidates)
        self._remember(key, choice.replica)
        return choice

    def forget_replica(self, replica: str) -> None:
        """A replica left (died or was replaced): drop what was routed to it."""
        self._pending.pop(replica, None)
        for program in [p for p, r in self._programs.items() if r == replica]:
            del self._programs[program]

    def _decide(self, key: RouteKey, candidates: list[ReplicaView]) -> Choice:
        cfg = self.config
        if cfg.policy == "round_robin":
            return Choice(candidates[next(self._turn) % len(candidates)].replica, "round_robin")
        if key.program is not None:
            home = self._programs.get(key.program)
            if home is not None and any(r.replica == home for r in candidates):
                self._programs.move_to_end(key.program)
                return Choice(home, "program")
        if imbalanced([r.load for r in candidates], cfg):
            return Choice(self._least_loaded(candidates).replica, "balance")
        now = self.clock()
        matches = [(self._held_blocks(r, key.blocks, now), r) for r in candidates]
        best = max(m for m, _ in matches)
        if best == 0:
            return Choice(self._least_loaded(candidates).replica, "least_loaded")
        winner = min((r for m, r in matches if m == best), key=lambda r: r.load)
        return Choice(winner.replica, "prefix", best)

    def _least_loaded(self, candidates: list[ReplicaView]) -> ReplicaView:
        low = min(r.load for r in candidates)
        tied = [r for r in candidates if r.load == low]
        return tied[next(self._turn) % len(tied)]  # ties rotate, so a cold start spreads out

    def _held_blocks(self, replica: ReplicaView, blocks: tuple[int, ...], now: float) -> int:
        pending = self._pending.get(replica.replica, {})
        for k, h in enumerate(blocks):
            if h not in replica.held and pending.get(h, 0.0) < now:
                return k
        return len(blocks)

    def _remember(self, key: RouteKey, replica: str) -> None:
        now = self.clock()
        if key.blocks and self.config.policy == "prefix":
            expiry = now + self.config.pending_ttl_s
            pending = self._pending.setdefault(replica, {})
            for h in key.blocks:
                pending[h] = expiry
        if key.program is not None:
            self._programs[key.program] = replica
            self._programs.move_to_end(key.program)
            while len(self._programs) > self.config.max_programs:
                self._programs.popitem(last=False)
        if now >= self._next_purge:
            self._next_purge = now + self.config.pending_ttl_s
            for table in self._pending.values():
                for h in [h for h, expiry in table.items() if expiry < now]:
                    del table[h]


def imbalanced(loads: list[int], config: RoutingConfig) -> bool:
    """SGLang's rule: max - min above the absolute threshold and max above rel * min."""
    if len(loads) < 2:
        return False
    high, low = max(loads), min(loads)
    return high - low > config.balance_abs_threshold and high > config.balance_rel_threshold * low
