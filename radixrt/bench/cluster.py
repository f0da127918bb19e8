"""`python -m radixrt.bench.cluster --replicas 2 --json out.json`: cache-aware routing against
round-robin on the same multi-tenant trace, each on a fresh `radixrt cluster` (empty caches).

The trace: `--tenants` system prompts of `--system-tokens` random tokens, `--requests` short
requests per tenant (the system prompt + a unique question), shuffled, sent `--concurrency` at a
time as token ids. Per policy: `hit_rate` (cached / prompt tokens, from meta_info),
`optimal_hit_rate` (a single server with an unbounded cache: each request reuses its longest common
prefix with any earlier request) and `requests_per_s` (the trace's wall time).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

import httpx

from radixrt.runtime.config import ServerArgs
from radixrt.runtime.server.server_handle import ServerHandle, free_port_pair, server_argv

POLICIES = ("prefix", "round_robin")


def make_trace(tenants: int, system_tokens: int, requests: int, question_tokens: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    vocab = range(1000, 30000)  # ordinary tokens of the embedded model's vocabulary
    systems = [[rng.choice(vocab) for _ in range(system_tokens)] for _ in range(tenants)]
    trace = [s + [rng.choice(vocab) for _ in range(question_tokens)] for s in systems for _ in range(requests)]
    rng.shuffle(trace)
    return trace


def optimal_hit_rate(trace: list[list[int]]) -> float:
    """Tokens a single server with an unbounded cache reuses: each request's longest common
    prefix with an earlier one (one token always computed), over all prompt tokens."""
    seen: list[list[int]] = []
    reused = 0
    for ids in trace:
        best = 0
        for earlier in seen:
            n = 0
            limit = min(len(ids) - 1, len(earlier))
            while n < limit and ids[n] == earlier[n]:
                n += 1
            best = max(best, n)
        reused += best
        seen.append(ids)
    return reused / sum(len(t) for t in trace)


def run_policy(policy: str, trace: list[list[int]], ns: argparse.Namespace) -> dict[str, Any]:
    args = ServerArgs.from_kwargs(model=ns.model, port=free_port_pair(), kv_slots=ns.kv_slots, shutdown_grace=2.0)
    flags = ["--replicas", str(ns.replicas), "--replica-threads", str(ns.replica_threads), "--routing", policy]
    cmd = [sys.executable, "-m", "radixrt", "cluster", *server_argv(args), *flags]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with ServerHandle(subprocess.Popen(cmd, env=env), args) as server:
        server.wait_ready(600)
        with httpx.Client(base_url=server.url, timeout=600, trust_env=False) as http:

            def send(ids: list[int]) -> dict[str, Any]:
                body = {"input_ids": ids, "sampling_params": {"max_new_tokens": ns.max_new_tokens, "temperature": 0}}
                answer = http.post("/generate", json=body)
                answer.raise_for_status()
                return answer.json()["meta_info"]

            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(ns.concurrency) as pool:
                metas = list(pool.map(send, trace))
            wall = time.perf_counter() - start
            replicas = http.get("/stats").json()["replicas"]
    prompt = sum(m["prompt_tokens"] for m in metas)
    served = {r: sum(m["replica"] == r for m in metas) for r in replicas}
    return {
        "hit_rate": sum(m["cached_tokens"] for m in metas) / prompt,
        "requests_per_s": len(trace) / wall,
        "wall_s": wall,
        "requests": len(trace),
        "prompt_tokens": prompt,
        "requests_per_replica": served,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m radixrt.bench.cluster", description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--model", default="default")
    p.add_argument("--tenants", type=int, default=8)
    p.add_argument("--system-tokens", type=int, default=1000)
    p.add_argument("--requests", type=int, default=12, help="requests per tenant")
    p.add_argument("--question-tokens", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--kv-slots", type=int, default=6000, help="per replica: room for half the tenants and more")
    p.add_argument("--replica-threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    ns = p.parse_args(argv)
    trace = make_trace(ns.tenants, ns.system_tokens, ns.requests, ns.question_tokens, ns.seed)
    optimal = optimal_hit_rate(trace)
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "settings": {k: v for k, v in vars(ns).items() if k != "json"},
    }
    for policy in POLICIES:
        results[policy] = {**run_policy(policy, trace, ns), "optimal_hit_rate": optimal}
        print(f"{policy}: {json.dumps(results[policy])}", flush=True)
    prefix, rr = results["prefix"], results["round_robin"]
    results["ratios"] = {
        "hit_rate_of_optimal": prefix["hit_rate"] / optimal,
        "round_robin_hit_rate_of_optimal": rr["hit_rate"] / optimal,
        "throughput_vs_round_robin": prefix["requests_per_s"] / rr["requests_per_s"],
    }
    results["targets"] = {
        "hit_rate_of_optimal>=0.95": results["ratios"]["hit_rate_of_optimal"] >= 0.95,
        "throughput_vs_round_robin>=1.3": results["ratios"]["throughput_vs_round_robin"] >= 1.3,
    }
    print(json.dumps({"ratios": results["ratios"], "targets": results["targets"]}, indent=1))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
