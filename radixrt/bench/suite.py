"""Every workload on every system: start all systems, then run each workload on each in turn
(many programs in flight, then one at a time), then cross-check the outputs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radixrt.bench import report
from radixrt.bench.crosscheck import compare, crosscheck, failure_lines
from radixrt.bench.runner import Run, run_interactive, run_one_at_a_time, run_workload
from radixrt.bench.systems import Session, SystemConfig, start
from radixrt.bench.workloads import WORKLOADS, Workload

NOJUMP_WORKLOADS = ("json_decode",)  # radixrt-nojump differs from radixrt only under a grammar
PROGRESS_EVERY_S = 60.0


@dataclass(frozen=True)
class Plan:
    """What to run: workloads and systems by name, sizes (None: each workload's own)."""

    workloads: list[str]
    systems: list[str]
    quick: bool
    num_programs: int | None
    interactive: int | None
    parallel: int
    seed: int


def run_suite(config: SystemConfig, plan: Plan, encode: Callable[[str], list[int]], log: Callable[[str], None]) -> dict:
    """results["workloads"]: per workload its figures on every system, ratios and cross-check.
    Outside load on a shared machine then falls on all systems of a workload alike."""
    results: dict[str, Any] = {}
    sessions: dict[str, Session] = {}
    try:
        for system in plan.systems:
            if any(applies(system, name) for name in plan.workloads):
                log(f"[{system}] starting ...")
                sessions[system] = start(system, config)
        for name in plan.workloads:
            results[name] = _one_workload(WORKLOADS[name], sessions, plan, encode, log)
    finally:
        for session in sessions.values():
            session.close()
    return results


def applies(system: str, workload: str) -> bool:
    return system != "radixrt-nojump" or workload in NOJUMP_WORKLOADS


def _one_workload(
    workload: Workload, sessions: dict[str, Session], plan: Plan, encode: Callable, log: Callable
) -> dict:
    n = plan.num_programs or (workload.quick_programs if plan.quick else workload.full_programs)
    k = workload.interactive_programs if plan.interactive is None else plan.interactive
    entry: dict[str, Any] = {"greedy": workload.greedy, "systems": {}, "interactive": {}}
    outputs: dict[str, list] = {}
    for system, session in sessions.items():
        if not applies(system, workload.name):
            continue
        if session.one_at_a_time:
            with _Progress(log, f"[{system}] {workload.name}: {n} programs one after another"):
                run, alone = run_one_at_a_time(workload, session, num_programs=n, interactive=k, seed=plan.seed,
                                               encode=encode)  # fmt: skip
            entry["systems"][system], outputs[system] = run.figures, run.outputs
            log(f"[{system}] {workload.name}: " + figures_line(run.figures))
            if k > 0:
                entry["interactive"][system] = alone.figures
                log(
                    f"[{system}] {workload.name} first {k} alone: mean latency {_seconds(alone.figures['latency_mean_s'])}"
                )
            continue
        with _Progress(log, f"[{system}] {workload.name}: {n} programs, {plan.parallel} in flight"):
            run = run_workload(workload, session, num_programs=n, parallel=plan.parallel, seed=plan.seed, encode=encode)
        entry["systems"][system], outputs[system] = run.figures, run.outputs
        log(f"[{system}] {workload.name}: " + figures_line(run.figures))
        if k > 0:
            with _Progress(log, f"[{system}] {workload.name}: {k} programs one at a time"):
                alone = run_interactive(workload, session, num_programs=min(k, n), seed=plan.seed)
            entry["interactive"][system] = alone.figures
            log(f"[{system}] {workload.name} one at a time: mean latency {_seconds(alone.figures['latency_mean_s'])}")
            if system == report.BASE:
                entry["alone_vs_batched"] = _alone_vs_batched(alone, run, workload.greedy)
    entry["ratios"] = report.ratios(entry["systems"], entry["interactive"])
    entry["crosscheck"] = crosscheck(outputs, workload.greedy)
    for line in failure_lines(workload.name, entry["crosscheck"]):
        log(line)
    return entry


def _alone_vs_batched(alone: Run, batched: Run, greedy: bool) -> dict | None:
    """radixrt's outputs for the programs it ran alone against the same programs in the batch."""
    return compare(batched.outputs[: len(alone.outputs)], alone.outputs) if greedy else None


def figures_line(f: dict[str, Any]) -> str:
    line = (f"{f['programs']} programs in {f['wall_s']:.1f}s  {f['programs_per_s']:.3f} prog/s  "
            f"{f['output_tokens_per_s']:.1f} out tok/s  p50 {_seconds(f['latency_p50_s'])} p99 {_seconds(f['latency_p99_s'])}  "
            f"hit {f['cache_hit_rate']:.0%} (optimal {f['optimal_hit_rate']:.0%})  busy {f.get('server_busy', 0):.0%}")  # fmt: skip
    if f.get("accuracy") is not None:
        line += f"  accuracy {f['accuracy']:.0%}"
    bad = f["programs"] - f["ok_programs"]
    return line + (f"  {bad} FAILED: {f['problems'][0]}" if bad else "")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


class _Progress:
    """Logs `what` when it starts, and how long it has been running every PROGRESS_EVERY_S."""

    def __init__(self, log: Callable[[str], None], what: str, every_s: float = PROGRESS_EVERY_S):
        self.log, self.what, self.every_s = log, what, every_s
        self._done = threading.Event()

    def __enter__(self) -> _Progress:
        self.start = time.perf_counter()
        self.log(f"{self.what} ...")
        threading.Thread(target=self._tick, name="radixrt-bench-progress", daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()

    def _tick(self) -> None:
        while not self._done.wait(self.every_s):
            self.log(f"{self.what}: still running, {time.perf_counter() - self.start:.0f}s so far")
