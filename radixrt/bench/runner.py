"""Run one workload on one started system and measure it."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from radixrt.bench import metrics
from radixrt.bench.recording import RecordingBackend
from radixrt.bench.systems import Session
from radixrt.bench.workloads import Workload
from radixrt.lang import Program, ProgramState

MAX_REPORTED_PROBLEMS = 3


def timed(program: Program) -> Program:
    """`program` whose run returns (start, end) perf_counter times as its `ret_value`.

    The body ends by syncing the state, so `end` is when the program's last request returned.
    `functools.wraps` keeps the signature, so tracing (shared-prefix prefetch) still works.
    """

    @functools.wraps(program.func)
    def body(s, *args: Any, **kwargs: Any) -> tuple[float, float]:
        start = time.perf_counter()
        program.func(s, *args, **kwargs)
        s.sync()
        return start, time.perf_counter()

    return Program(body, bind_arguments=dict(program.bind_arguments))


def run_workload(
    workload: Workload,
    session: Session,
    *,
    num_programs: int,
    parallel: int,
    seed: int,
    encode: Callable[[str], list[int]],
) -> dict[str, Any]:
    """Flush the cache, run `num_programs` programs with `parallel` in flight, return the figures."""
    batch = workload.build(num_programs, seed)
    recorder = RecordingBackend(session.backend)
    session.backend.flush_cache()
    before = session.backend.get_server_info()
    start = time.perf_counter()
    states = timed(batch.program).run_batch(batch.inputs, backend=recorder, num_threads=parallel)
    wall = time.perf_counter() - start
    after = session.backend.get_server_info()
    problems = [_problems(workload, state, inputs) for state, inputs in zip(states, batch.inputs)]
    figures = _throughput(states, recorder, wall)
    figures.update(_cache(before, after, recorder, encode))
    if "busy_s" in after:  # the share of the wall time the model was running
        figures["server_busy"] = (after["busy_s"] - before.get("busy_s", 0.0)) / wall
    figures["ok_programs"] = sum(1 for p in problems if not p)
    figures["problems"] = [p for ps in problems for p in ps][:MAX_REPORTED_PROBLEMS]
    return figures


def _problems(workload: Workload, state: ProgramState, inputs: dict[str, Any]) -> list[str]:
    if state.error() is not None:
        return [f"error: {type(state.error()).__name__}: {state.error()}"[:300]]
    try:
        return workload.check(state, inputs)
    except Exception as e:  # noqa: BLE001 - a malformed output must be reported, not crash the run
        return [f"check failed: {type(e).__name__}: {e}"[:300]]


def _throughput(states: list[ProgramState], recorder: RecordingBackend, wall: float) -> dict[str, Any]:
    latencies = [end - start for start, end in (s.ret_value for s in states if s.ret_value is not None)]
    calls = recorder.calls()
    output_tokens = sum(c.completion_tokens for c in calls)
    return {
        "programs": len(states),
        "wall_s": wall,
        "programs_per_s": len(states) / wall,
        "output_tokens": output_tokens,
        "output_tokens_per_s": output_tokens / wall,
        "latency_p50_s": metrics.percentile(latencies, 50),
        "latency_p99_s": metrics.percentile(latencies, 99),
        "requests": len(calls),
    }


def _cache(before: dict, after: dict, recorder: RecordingBackend, encode: Callable[[str], list[int]]) -> dict:
    """Measured hit rate from the server's counters; optimal from the recorded token trace."""
    hit = after.get("cache_hit_tokens", 0) - before.get("cache_hit_tokens", 0)
    prompt = after.get("prompt_tokens", 0) - before.get("prompt_tokens", 0)
    optimal_hit, optimal_prompt = metrics.optimal_hits(metrics.token_trace(recorder.calls(), encode))
    return {
        "prompt_tokens": prompt,
        "cache_hit_tokens": hit,
        "cache_hit_rate": hit / prompt if prompt else 0.0,
        "trace_prompt_tokens": optimal_prompt,
        "optimal_hit_rate": optimal_hit / optimal_prompt if optimal_prompt else 0.0,
    }
