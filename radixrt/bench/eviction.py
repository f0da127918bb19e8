"""`python -m radixrt.bench.eviction`: radix cache hit rates of the eviction policies on a skewed
multi-tenant trace, replayed against the cache alone (no model).

The trace: `tenants` tenants, each with its own system prompt (`prompt_tokens` tokens, give or take a
half) and its own cache salt; each request picks a tenant by a Zipf law (exponent `zipf`) and sends
that system prompt plus a unique suffix, and then "generates" a unique output. With `shift_every`,
the tenants' popularity ranks are reshuffled that often (traffic that drifts). Requests run through
the scheduler's `CacheManager` over a real `KVPool` of `kv_slots` slots (as `--kv-slots` would size
it), `concurrent` at a time: a request is admitted (its cached prefix borrowed and locked, slots for
the rest allocated, evicting as needed), computes its prompt and output, and is released into the
tree `concurrent` requests later. The hit rate is prompt tokens found cached over prompt tokens, as
`/stats` counts it; `optimal` is the same trace with a cache that never evicts.

Prints and (with --out) writes JSON: per policy and cache size, the hit rate.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from radixrt.radix_cache.eviction import EVICTION_POLICIES
from radixrt.radix_cache.pool import KVPool, ReqToToken
from radixrt.runtime.protocol import SamplingParams
from radixrt.runtime.scheduler.cache_manager import CacheManager
from radixrt.runtime.scheduler.req import Req


@dataclass(frozen=True)
class Trace:
    tenants: int = 64
    requests: int = 4000
    zipf: float = 1.1
    prompt_tokens: int = 400  # a tenant's system prompt: 0.5x to 1.5x this
    suffix_tokens: int = 60  # a request's own question: 0.5x to 1.5x this
    output_tokens: int = 40  # its answer: 0.5x to 1.5x this
    concurrent: int = 8
    shift_every: int = 0  # > 0: tenants' popularity ranks are reshuffled every this many requests
    seed: int = 0


@dataclass(frozen=True)
class TraceRequest:
    tenant: int
    system_len: int
    prompt: list[int]
    output: list[int]


def make_trace(t: Trace) -> list[TraceRequest]:
    rng = random.Random(t.seed)
    vocab = 50_000

    def run(mean: int) -> list[int]:
        return [rng.randrange(vocab) for _ in range(rng.randint(mean // 2, mean + mean // 2))]

    systems = [run(t.prompt_tokens) for _ in range(t.tenants)]
    weights = [1.0 / (rank + 1) ** t.zipf for rank in range(t.tenants)]
    tenants: list[int] = []
    order = list(range(t.tenants))
    while len(tenants) < t.requests:
        block = min(t.shift_every or t.requests, t.requests - len(tenants))
        tenants += rng.choices(order, weights, k=block)
        rng.shuffle(order)
    return [TraceRequest(i, len(systems[i]), systems[i] + run(t.suffix_tokens), run(t.output_tokens)) for i in tenants]


def replay(trace: list[TraceRequest], kv_slots: int, policy: str, concurrent: int) -> dict[str, Any]:
    """Hit rate of `trace` through a CacheManager of `kv_slots` slots evicting by `policy`."""
    pool = KVPool(kv_slots + 1, num_layers=1, n_kv_heads=1, head_dim=1)
    cache = CacheManager(pool, ReqToToken(concurrent + 1, 1 << 14), eviction=policy)
    running: deque[Req] = deque()
    for i, item in enumerate(trace):
        req = Req(f"r{i}", item.prompt, SamplingParams(max_new_tokens=len(item.output)), i, salt=f"t{item.tenant}")
        need = len(item.prompt) + len(item.output)
        while running and (len(running) >= concurrent or cache.available_after_borrow(cache.peek(req)) < need):
            cache.release(running.popleft())
        uncached = req.known - cache.prefix_len(req)
        cache.admit(req, uncached)
        req.computed = req.known
        req.output_ids = list(item.output)
        slots = cache.alloc(len(item.output))
        assert slots is not None, "the fit check above reserved the output's slots"
        cache.append(req, slots)
        req.computed = req.known
        running.append(req)
    while running:
        cache.release(running.popleft())
    cache.check([])
    return {
        "policy": policy,
        "kv_slots": kv_slots,
        "hit_rate": round(cache.hit_tokens / cache.prompt_tokens, 4),
        "hit_tokens": cache.hit_tokens,
        "prompt_tokens": cache.prompt_tokens,
    }


def run(trace_cfg: Trace, sizes: list[int], policies: list[str]) -> dict[str, Any]:
    trace = make_trace(trace_cfg)
    total = sum(len(r.prompt) + len(r.output) for r in trace)
    optimal = replay(trace, total + 1, "lru", trace_cfg.concurrent)["hit_rate"]
    results = []
    for size in sizes:
        for policy in policies:
            start = time.perf_counter()
            row = replay(trace, size, policy, trace_cfg.concurrent)
            row["seconds"] = round(time.perf_counter() - start, 2)
            results.append(row)
    return {
        "trace": asdict(trace_cfg),
        "optimal_hit_rate": optimal,
        "system_prompt_tokens": sum({r.tenant: r.system_len for r in trace}.values()),
        "results": results,
        "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m radixrt.bench.eviction", description=__doc__.split("\n\n")[0])
    defaults = Trace()
    for name, value in asdict(defaults).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    p.add_argument("--kv-slots", type=int, nargs="+", default=[4096, 8192, 16384], help="cache sizes to replay")
    p.add_argument("--policies", nargs="+", default=list(EVICTION_POLICIES), choices=EVICTION_POLICIES)
    p.add_argument("--out", help="write the JSON here too")
    ns = vars(p.parse_args(argv))
    sizes, policies, out = ns.pop("kv_slots"), ns.pop("policies"), ns.pop("out")
    report = run(Trace(**ns), sizes, policies)
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
