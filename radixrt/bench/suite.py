"""Every workload on every system: start all systems, then run each workload on each in turn
(many programs in flight, then one at a time), then cross-check the outputs; with several rounds,
each round runs every system again in the reverse order of the round before."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    rounds: int = 1


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


def round_orders(systems: list[str], rounds: int) -> list[list[str]]:
    """The systems' order in each round: forward, then backward, and so on (A B, B A, A B ...),
    so that a machine speeding up or slowing down during a workload favours no system."""
    return [list(systems) if r % 2 == 0 else list(reversed(systems)) for r in range(rounds)]


@dataclass
class _Round:
    systems: dict[str, dict] = field(default_factory=dict)
    interactive: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, list] = field(default_factory=dict)
    alone_vs_batched: dict | None = None


def _one_workload(
    workload: Workload, sessions: dict[str, Session], plan: Plan, encode: Callable, log: Callable
) -> dict:
    """With `plan.rounds` > 1 every system runs the workload once per round, in alternating order;
    the figures are the first round's, each ratio the median of the rounds' own ratios (each
    round's systems ran minutes apart, so machine drift between rounds cancels), with its range."""
    names = [s for s in sessions if applies(s, workload.name)]
    rounds = []
    for r, order in enumerate(round_orders(names, plan.rounds)):
        if plan.rounds > 1:
            log(f"[round {r + 1}/{plan.rounds}] {workload.name}: {', '.join(order)}")
        rounds.append(_one_round(workload, {s: sessions[s] for s in order}, plan, encode, log))
    first = rounds[0]
    entry: dict[str, Any] = {"greedy": workload.greedy, "systems": _ordered(first.systems, names),
                             "interactive": _ordered(first.interactive, names)}  # fmt: skip
    if first.alone_vs_batched is not None:
        entry["alone_vs_batched"] = first.alone_vs_batched
    per_round = [report.ratios(r.systems, r.interactive) for r in rounds]
    entry["ratios"] = report.median_ratios(per_round)
    if len(rounds) > 1:
        entry["ratio_ranges"] = report.ratio_ranges(per_round)
        entry["rounds"] = [{"systems": r.systems, "interactive": r.interactive, "ratios": ratios}
                           for r, ratios in zip(rounds, per_round)]  # fmt: skip
    checks = [crosscheck(r.outputs, workload.greedy) for r in rounds]
    entry["crosscheck"] = next((c for c in checks if c["failed"]), checks[0]) | {"rounds": len(checks)}
    for line in failure_lines(workload.name, entry["crosscheck"]):
        log(line)
    return entry


def _ordered(figures: dict[str, dict], names: list[str]) -> dict[str, dict]:
    return {name: figures[name] for name in names if name in figures}


def _one_round(workload: Workload, sessions: dict[str, Session], plan: Plan, encode: Callable, log: Callable) -> _Round:
    n = plan.num_programs or (workload.quick_programs if plan.quick else workload.full_programs)
    k = workload.interactive_programs if plan.interactive is None else plan.interactive
    out = _Round()
    for system, session in sessions.items():
        if session.one_at_a_time:
            with _Progress(log, f"[{system}] {workload.name}: {n} programs one after another"):
                run, alone = run_one_at_a_time(workload, session, num_programs=n, interactive=k, seed=plan.seed,
                                               encode=encode)  # fmt: skip
            out.systems[system], out.outputs[system] = run.figures, run.outputs
            log(f"[{system}] {workload.name}: " + figures_line(run.figures))
            if k > 0:
                out.interactive[system] = alone.figures
                log(
                    f"[{system}] {workload.name} first {k} alone: mean latency {_seconds(alone.figures['latency_mean_s'])}"
                )
            continue
        with _Progress(log, f"[{system}] {workload.name}: {n} programs, {plan.parallel} in flight"):
            run = run_workload(workload, session, num_programs=n, parallel=plan.parallel, seed=plan.seed, encode=encode)
        out.systems[system], out.outputs[system] = run.figures, run.outputs
        log(f"[{system}] {workload.name}: " + figures_line(run.figures))
        if k > 0:
            with _Progress(log, f"[{system}] {workload.name}: {k} programs one at a time"):
                alone = run_interactive(workload, session, num_programs=min(k, n), seed=plan.seed)
            out.interactive[system] = alone.figures
            log(f"[{system}] {workload.name} one at a time: mean latency {_seconds(alone.figures['latency_mean_s'])}")
            if system == report.BASE:
                out.alone_vs_batched = _alone_vs_batched(alone, run, workload.greedy)
    return out


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
