"""Load test of `radixrt serve` on loopback: DSL programs and streaming clients at once.

    python benchmarks/load_test.py [--model default] [--programs 200] [--streams 50] [--disconnect 0.2]

1. Starts a server on 127.0.0.1 (free ports), or uses `--http URL --zmq ADDR` (loopback only).
2. Quiet run: every program and every streaming request alone, one after the other (greedy).
3. Flushes the cache, then the loaded run: all programs (radixrt.lang, one thread each, over
   ZMQ) and all streaming clients (OpenAI-style SSE over HTTP) at once; a `--disconnect` share of
   the clients hang up after a random number of events.
4. Checks: every surviving program and stream produced exactly its quiet output; afterwards
   /stats shows nothing running, kv_slots_in_use == 0 and free + cached == total.
Prints a JSON report (requests, failures, mismatches, p50/p99 latencies); exit status 1 unless
every check passed. Everything is bounded: counts by the flags, time by `--time-limit`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

import radixrt.lang as rl  # noqa: E402
from benchmarks.load_programs import PROGRAMS, ProgramCase, make_programs  # noqa: E402

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


@dataclass
class StreamCase:
    messages: list[dict[str, str]]
    max_tokens: int
    hang_up_after: int | None  # events read before disconnecting; None: read to the end


def make_streams(n: int, disconnect: float, max_tokens: int, rng: random.Random) -> list[StreamCase]:
    topics = ["rivers", "compilers", "tea", "glaciers", "chess", "bridges", "owls", "jazz"]
    cases = []
    for i in range(n):
        question = f"Client {i}: tell me three facts about {rng.choice(topics)}."
        hang = rng.randint(1, max(1, max_tokens // 2)) if rng.random() < disconnect else None
        cases.append(StreamCase([{"role": "user", "content": question}], max_tokens, hang))
    return cases


# ---- one streaming client --------------------------------------------------------------------


async def stream_once(client: httpx.AsyncClient, api: str, case: StreamCase) -> dict[str, Any]:
    """Stream one request; its text, events read, latency, and whether it hung up on purpose."""
    started = time.perf_counter()
    if api == "openai":
        body = {"model": "default", "messages": case.messages, "max_tokens": case.max_tokens,
                "temperature": 0, "stream": True}  # fmt: skip
        path = "/v1/chat/completions"
    else:
        body = {"text": case.messages[0]["content"], "stream": True,
                "sampling_params": {"max_new_tokens": case.max_tokens, "temperature": 0}}  # fmt: skip
        path = "/generate"
    text, events = "", 0
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(f"stream error: {event['error']}")
            text = text + _delta(event) if api == "openai" else event["text"]
            events += 1
            if case.hang_up_after is not None and events >= case.hang_up_after:
                return {"text": None, "events": events, "hung_up": True, "latency": time.perf_counter() - started}
    return {"text": text, "events": events, "hung_up": False, "latency": time.perf_counter() - started}


def _delta(event: dict[str, Any]) -> str:
    choices = event.get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content") or ""


async def run_streams(url: str, api: str, cases: list[StreamCase], timeout: float) -> list[Any]:
    limits = httpx.Limits(max_connections=len(cases) + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, trust_env=False, limits=limits) as client:
        jobs = [stream_once(client, api, case) for case in cases]
        return await asyncio.gather(*jobs, return_exceptions=True)


# ---- programs --------------------------------------------------------------------------------


def run_program(backend: Any, case: ProgramCase) -> dict[str, Any]:
    started = time.perf_counter()
    state = PROGRAMS[case.kind].run(backend=backend, temperature=0, **case.kwargs)
    return {"output": case.output(state), "latency": time.perf_counter() - started}


def run_programs(backend: Any, cases: list[ProgramCase], workers: int) -> list[Any]:
    def guarded(case: ProgramCase) -> Any:
        try:
            return run_program(backend, case)
        except Exception as e:  # noqa: BLE001 - a failed program is a finding, not a crash
            return e

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="load-program") as pool:
        return list(pool.map(guarded, cases))


# ---- the test --------------------------------------------------------------------------------


def server_stats(url: str) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
        return client.get("/stats").json()


def wait_idle(url: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        s = server_stats(url)
        if (s["running"] == 0 and s["waiting"] == 0 and s["requests_in_flight"] == 0) or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def compare(quiet: list[Any], loud: list[Any], key: str) -> tuple[list[str], int, list[float]]:
    """(failures, mismatches, latencies of the loaded run's requests that ran to their end)."""
    failures, mismatches, latencies = [], 0, []
    for i, (q, r) in enumerate(zip(quiet, loud, strict=True)):
        if isinstance(q, BaseException) or isinstance(r, BaseException):
            failures.append(f"#{i}: {q if isinstance(q, BaseException) else r!r}"[:300])
        elif not r.get("hung_up"):
            latencies.append(r["latency"])
            mismatches += r[key] != q[key]
    return failures, mismatches, latencies


def load_test(http_url: str, zmq_addr: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Quiet run, flush, loaded run, checks; the report."""
    rng = random.Random(opts.seed)
    programs = make_programs(opts.programs, opts.max_tokens, rng)
    streams = make_streams(opts.streams, opts.disconnect, opts.max_tokens, rng)
    quiet_streams = [StreamCase(s.messages, s.max_tokens, None) for s in streams]
    backend = rl.RuntimeEndpoint(zmq_addr, timeout=opts.request_timeout)
    started = time.perf_counter()
    quiet_programs = run_programs(backend, programs, workers=1)
    quiet_stream_results = [asyncio.run(run_streams(http_url, opts.stream_api, [s], opts.request_timeout))[0]
                            for s in quiet_streams]  # fmt: skip
    quiet_s = time.perf_counter() - started
    with httpx.Client(base_url=http_url, timeout=60, trust_env=False) as client:
        client.post("/flush_cache")
    before = server_stats(http_url)
    started = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        loud_programs = pool.submit(run_programs, backend, programs, len(programs))
        loud_streams = asyncio.run(run_streams(http_url, opts.stream_api, streams, opts.request_timeout))
        loud_program_results = loud_programs.result()
    loaded_s = time.perf_counter() - started
    after = wait_idle(http_url, 60)
    p_fail, p_mismatch, p_lat = compare(quiet_programs, loud_program_results, "output")
    s_fail, s_mismatch, s_lat = compare(quiet_stream_results, loud_streams, "text")
    kv = {k: after[k] for k in ("kv_slots_in_use", "kv_slots_free", "kv_slots_cached", "kv_slots_total")}
    books = kv["kv_slots_in_use"] == 0 and kv["kv_slots_free"] + kv["kv_slots_cached"] == kv["kv_slots_total"]
    report = {
        "programs": len(programs),
        "program_kinds": sorted({p.kind for p in programs}),
        "streams": len(streams),
        "streams_hung_up": sum(1 for s in streams if s.hang_up_after is not None),
        "server_requests": after["requests_received"] - before["requests_received"],
        "server_requests_aborted": after["requests_aborted"] - before["requests_aborted"],
        "server_requests_failed": after["requests_failed"] - before["requests_failed"],
        "failures": p_fail + s_fail,
        "mismatches": p_mismatch + s_mismatch,
        "program_latency_p50_s": percentile(p_lat, 0.5),
        "program_latency_p99_s": percentile(p_lat, 0.99),
        "stream_latency_p50_s": percentile(s_lat, 0.5),
        "stream_latency_p99_s": percentile(s_lat, 0.99),
        "quiet_run_s": round(quiet_s, 2),
        "loaded_run_s": round(loaded_s, 2),
        "kv_after": kv,
        "idle_after": after["running"] == 0 and after["waiting"] == 0 and after["requests_in_flight"] == 0,
    }
    report["ok"] = not report["failures"] and not report["mismatches"] and books and report["idle_after"]
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="model for the server this script starts")
    p.add_argument("--http", help="use a running server's HTTP URL (loopback only)")
    p.add_argument("--zmq", help="and its ZMQ address (tcp://127.0.0.1:PORT)")
    p.add_argument("--programs", type=int, default=200)
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--disconnect", type=float, default=0.2, help="share of streaming clients that hang up")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--stream-api", choices=("openai", "generate"), default="openai")
    p.add_argument("--kv-slots", type=int, default=16384)
    p.add_argument("--max-running-requests", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--time-limit", type=float, default=1800.0, help="the whole test, in seconds")
    p.add_argument("--json", help="also write the report here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.programs > 1000 or opts.streams > 1000:
        raise SystemExit("at most 1000 programs and 1000 streams")
    report = run_bounded(opts)
    text = json.dumps(report, indent=2)
    print(text)
    if opts.json:
        with open(opts.json, "w") as f:
            f.write(text + "\n")
    return 0 if report["ok"] else 1


def run_bounded(opts: argparse.Namespace) -> dict[str, Any]:
    """Run against `--http/--zmq` or a server started here; give up after `--time-limit`."""
    if opts.http:
        if not any(host in opts.http for host in LOOPBACK) or not any(host in opts.zmq for host in LOOPBACK):
            raise SystemExit("this load test only targets loopback addresses")
        return _with_time_limit(load_test, opts.http, opts.zmq, opts)
    from radixrt.runtime.config import ServerArgs
    from radixrt.runtime.server.server_handle import launch_server

    args = ServerArgs.from_kwargs(model=opts.model, dtype="float32", kv_slots=opts.kv_slots, port=0,
                                  max_running_requests=opts.max_running_requests, log_level="warning")  # fmt: skip
    with launch_server(args, timeout=900) as server:
        report = _with_time_limit(load_test, server.url, server.zmq_address, opts)
        report["server_exit_status"] = server.shutdown()
    return report


def _with_time_limit(fn: Any, *args: Any) -> dict[str, Any]:
    """fn(*args) in a daemon thread; a report of the time-out if it is not done by `--time-limit`."""
    opts, box = args[-1], {}

    def call() -> None:
        try:
            box["report"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported, not raised: the server must still stop
            box["report"] = {"ok": False, "failures": [f"the load test raised {e!r}"]}

    thread = threading.Thread(target=call, name="load-test", daemon=True)
    thread.start()
    thread.join(opts.time_limit)
    return box.get("report") or {"ok": False, "failures": [f"not done within --time-limit {opts.time_limit:g}s"]}


if __name__ == "__main__":
    sys.exit(main())
