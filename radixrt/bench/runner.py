"""Run one workload on one started system and measure it: many programs in flight (throughput),
or one program at a time (a single user's latency)."""

from __future__ import annotations

import functools
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radixrt.bench import metrics
from radixrt.bench.recording import RecordingBackend
from radixrt.bench.systems import Session
from radixrt.bench.workloads import Workload
from radixrt.lang import Program, ProgramState

MAX_REPORTED_PROBLEMS = 3


@dataclass
class Run:
    """A workload's figures on one system, and what each program generated (None: it failed)."""

    figures: dict[str, Any]
    outputs: list[dict[str, Any] | None]


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
) -> Run:
    """Flush the cache, run `num_programs` programs with `parallel` in flight, return the figures."""
    batch = workload.build(num_programs, seed)
    recorder = RecordingBackend(session.backend)
    session.backend.flush_cache()
    before = session.backend.get_server_info()
    start = time.perf_counter()
    states = timed(batch.program).run_batch(batch.inputs, backend=recorder, num_threads=parallel)
    wall = time.perf_counter() - start
    after = session.backend.get_server_info()
    figures = _throughput(states, recorder, wall)
    figures.update(_cache(before, after, recorder, encode))
    figures.update(_speculation(before, after))
    if "busy_s" in after:  # the share of the wall time the model was running
        figures["server_busy"] = (after["busy_s"] - before.get("busy_s", 0.0)) / wall
    run = _judge(workload, states, batch.inputs, batch.answers)
    run.figures = figures | run.figures
    return run


def run_one_at_a_time(
    workload: Workload, session: Session, *, num_programs: int, interactive: int, seed: int, encode: Callable
) -> tuple[Run, Run]:
    """For a system that serves one sequence at a time: flush the cache, run `num_programs`
    programs one after another, once. Returns the figures of the whole run (its throughput) and
    those of its first `interactive` programs (a single user's latency: the same programs, in the
    same order, from the same flushed cache as `run_interactive` runs them)."""
    batch = workload.build(num_programs, seed)
    recorder = RecordingBackend(session.backend)
    session.backend.flush_cache()
    before = session.backend.get_server_info()
    program, states, calls_after = timed(batch.program), [], []
    start = time.perf_counter()
    for inputs in batch.inputs:
        states += program.run_batch([inputs], backend=recorder, num_threads=1)
        calls_after.append(len(recorder.calls()))
    wall = time.perf_counter() - start
    after = session.backend.get_server_info()
    run = _judge(workload, states, batch.inputs, batch.answers)
    run.figures = _throughput(states, recorder, wall) | _cache(before, after, recorder, encode) | run.figures
    if "busy_s" in after:
        run.figures["server_busy"] = (after["busy_s"] - before.get("busy_s", 0.0)) / wall
    k = min(interactive, len(states))
    answers = None if batch.answers is None else batch.answers[:k]
    alone = _judge(workload, states[:k], batch.inputs[:k], answers)
    latencies = [end - begin for begin, end in (s.ret_value for s in states[:k] if s.ret_value is not None)]
    output_tokens = sum(c.completion_tokens for c in recorder.calls()[: calls_after[k - 1]]) if k else 0
    alone.figures |= _latency_figures(k, latencies, output_tokens)
    return run, alone


def run_interactive(workload: Workload, session: Session, *, num_programs: int, seed: int) -> Run:
    """A single user's agent: flush the cache, then run the workload's first `num_programs`
    programs one after another (each alone on the system); per-program latency."""
    batch = workload.build(num_programs, seed)
    recorder = RecordingBackend(session.backend)
    session.backend.flush_cache()
    before = session.backend.get_server_info()
    program, states, latencies = timed(batch.program), [], []
    for inputs in batch.inputs:
        [state] = program.run_batch([inputs], backend=recorder, num_threads=1)
        states.append(state)
        if state.ret_value is not None:
            latencies.append(state.ret_value[1] - state.ret_value[0])
    after = session.backend.get_server_info()
    run = _judge(workload, states, batch.inputs, batch.answers)
    output_tokens = sum(c.completion_tokens for c in recorder.calls())
    run.figures |= _latency_figures(len(states), latencies, output_tokens) | _speculation(before, after)
    return run


def _latency_figures(programs: int, latencies: list[float], output_tokens: int) -> dict[str, Any]:
    return {
        "programs": programs,
        "latency_mean_s": statistics.fmean(latencies) if latencies else None,
        "latency_p50_s": metrics.percentile(latencies, 50),
        "latencies_s": latencies,
        "output_tokens": output_tokens,
        "output_tokens_per_s": output_tokens / sum(latencies) if latencies else None,
    }


def output_digest(outputs: dict[str, Any] | None) -> str | None:
    """A short fingerprint of one program's outputs (kept in the results instead of the text)."""
    if outputs is None:
        return None
    return hashlib.sha1(json.dumps(outputs, sort_keys=True).encode()).hexdigest()[:12]


def _judge(workload: Workload, states: list[ProgramState], inputs: list[dict], answers: list | None) -> Run:
    """Checks, outputs and (where the prompt determines the answer) accuracy of finished programs."""
    problems = [_problems(workload, state, kw) for state, kw in zip(states, inputs)]
    outputs = [None if state.error() is not None else _outputs(workload, state) for state in states]
    figures: dict[str, Any] = {
        "ok_programs": sum(1 for p in problems if not p),
        "problems": [p for ps in problems for p in ps][:MAX_REPORTED_PROBLEMS],
        "output_digests": [output_digest(o) for o in outputs],
    }
    if workload.correct is not None and answers is not None:
        right = [o is not None and _safe(workload.correct, s, a) for s, o, a in zip(states, outputs, answers)]
        figures["accuracy"] = sum(right) / len(right) if right else None
    return Run(figures, outputs)


def _problems(workload: Workload, state: ProgramState, inputs: dict[str, Any]) -> list[str]:
    if state.error() is not None:
        return [f"error: {type(state.error()).__name__}: {state.error()}"[:300]]
    try:
        return workload.check(state, inputs)
    except Exception as e:  # noqa: BLE001 - a malformed output must be reported, not crash the run
        return [f"check failed: {type(e).__name__}: {e}"[:300]]


def _safe(correct: Callable[[ProgramState, Any], bool], state: ProgramState, answer: Any) -> bool:
    try:
        return bool(correct(state, answer))
    except Exception:  # noqa: BLE001 - an unreadable answer is a wrong one
        return False


def _outputs(workload: Workload, state: ProgramState) -> dict[str, Any] | None:
    try:
        return workload.outputs(state)
    except Exception:  # noqa: BLE001 - counted by the check already; nothing to compare
        return None


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


def _speculation(before: dict, after: dict) -> dict:
    """Draft tokens the server verified during the run and the share it accepted (none: it did not draft)."""
    drafted = after.get("spec_draft_tokens", 0) - before.get("spec_draft_tokens", 0)
    accepted = after.get("spec_accepted_tokens", 0) - before.get("spec_accepted_tokens", 0)
    if "spec_draft_tokens" not in after:
        return {}
    return {"spec_draft_tokens": drafted, "spec_accepted_tokens": accepted,
            "spec_acceptance": accepted / drafted if drafted else None}  # fmt: skip


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
