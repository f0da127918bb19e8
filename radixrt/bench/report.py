"""Results: ratios between systems, machine description, the JSON file and the PNG chart
(the Markdown tables: `tables.py`).

JSON shape: {"workloads": {NAME: {"greedy": bool, "systems": {SYSTEM: figures}, "interactive":
{SYSTEM: figures}, "ratios": {SYSTEM: {...}}, "crosscheck": {...}}}, "micro": {...},
"machine": {...}, "settings": {...}, "skipped_systems": {SYSTEM: reason}}. With --rounds > 1 a
workload also holds "ratio_ranges": {SYSTEM: {KEY: [low, high]}} and "rounds": [{"systems",
"interactive", "ratios"}, ...], and its "ratios" are the rounds' medians.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from radixrt.bench.metrics import ratio

BASE = "radixrt"
REFERENCES = ("transformers", "llamacpp", "radixrt-nocache")  # the plot's 1x, first one measured
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni",
             "amx_tile", "amx_bf16", "amx_int8")  # fmt: skip


def ratios(systems: dict[str, dict[str, Any]], interactive: dict[str, dict[str, Any]] | None = None) -> dict[str, dict]:
    """For each other system: radixrt's throughput over its, and its latencies over radixrt's
    (so every number > 1 means radixrt is faster); `interactive_speedup` compares the mean
    latency of programs run one at a time."""
    base, interactive = systems.get(BASE), interactive or {}
    out: dict[str, dict[str, float | None]] = {}
    for other, theirs in systems.items():
        if base is None or other == BASE:
            continue
        out[other] = {
            "programs_per_s": ratio(base["programs_per_s"], theirs["programs_per_s"]),
            "output_tokens_per_s": ratio(base["output_tokens_per_s"], theirs["output_tokens_per_s"]),
            "latency_p50_speedup": ratio(theirs["latency_p50_s"], base["latency_p50_s"]),
            "latency_p99_speedup": ratio(theirs["latency_p99_s"], base["latency_p99_s"]),
            "interactive_speedup": _interactive(interactive, other),
            "interactive_output_tokens_per_s": _interactive_tokens(interactive, other),
        }
    return out


def median_ratios(per_round: list[dict[str, dict]]) -> dict[str, dict]:
    """Each ratio's median over the rounds that measured it (one round: its own ratios)."""
    return _over_rounds(per_round, statistics.median)


def ratio_ranges(per_round: list[dict[str, dict]]) -> dict[str, dict]:
    """Each ratio's [lowest, highest] over the rounds."""
    return _over_rounds(per_round, lambda values: [min(values), max(values)])


def _over_rounds(per_round: list[dict[str, dict]], combine: Callable[[list[float]], Any]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for ratios in per_round:
        for other, keyed in ratios.items():
            for key, value in keyed.items():
                out.setdefault(other, {}).setdefault(key, [])
                if value is not None:
                    out[other][key].append(value)
    return {other: {k: combine(v) if v else None for k, v in keyed.items()} for other, keyed in out.items()}


def _interactive(interactive: dict[str, dict[str, Any]], other: str) -> float | None:
    ours, theirs = interactive.get(BASE), interactive.get(other)
    return ratio(theirs["latency_mean_s"], ours["latency_mean_s"]) if ours and theirs else None


def _interactive_tokens(interactive: dict[str, dict[str, Any]], other: str) -> float | None:
    """radixrt's output tokens/s over the other system's, one program at a time."""
    ours, theirs = interactive.get(BASE), interactive.get(other)
    if not ours or not theirs:
        return None
    return ratio(ours.get("output_tokens_per_s"), theirs.get("output_tokens_per_s"))


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "cpu": _cpu_field("model name") or platform.processor() or "unknown",
        # NOTE: a virtual machine's model name can hide the generation ("AMD EPYC" for Zen 4 and Zen 5)
        "cpu_id": _cpu_id(),
        "isa": [f for f in ISA_FLAGS if f in (_cpu_field("flags") or "").split()],
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **_llama_cpp_info(),
    }


def _cpu_id() -> str | None:
    """The x86 family, model and stepping numbers, which tell apart CPUs sold under one name."""
    fields = [
        (label, _cpu_field(name))
        for label, name in (("family", "cpu family"), ("model", "model"), ("stepping", "stepping"))
    ]
    return ", ".join(f"{label} {value}" for label, value in fields if value) or None


def _cpu_field(name: str) -> str | None:
    """The first `name : value` line of /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _llama_cpp_info() -> dict[str, Any]:
    """llama-cpp-python's version and the CPU features its llama.cpp was built with."""
    try:
        import llama_cpp
    except ImportError:
        return {}
    info = llama_cpp.llama_print_system_info().decode()
    features = " ".join(
        part.split("=")[0].replace("CPU :", "").strip() for part in info.split("|") if part.strip().endswith("= 1")
    )
    return {"llama_cpp_python": llama_cpp.__version__, "llama_cpp_build": features}


def write_json(results: dict[str, Any], path: str | Path) -> None:
    """Strict JSON: NaN (a percentile of no values) is written as null."""
    Path(path).write_text(json.dumps(_finite(results), indent=2, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_plot(results: dict[str, Any], path: str | Path) -> None:
    """Two panels: programs/s per system relative to transformers (or, without it, the first of
    REFERENCES measured; log scale), and radixrt's measured cache hit rate beside the optimal one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    workloads = results["workloads"]
    names = list(workloads)
    systems = sorted({s for w in workloads.values() for s in w["systems"]}, key=system_order)
    reference = next((r for r in REFERENCES if r in systems), systems[0] if systems else BASE)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 1.3 * len(names) + 2), 8))
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        values = [_relative(workloads[n]["systems"], system, reference) for n in names]
        top.bar([x + i * width for x in range(len(names))], values, width, label=system)
    top.set_yscale("log")
    top.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    top.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    top.axhline(1.0, color="grey", linewidth=0.8)
    top.set_ylabel(f"programs/s vs {reference}")
    top.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(names))], names, rotation=20)
    top.legend(fontsize=8)
    _hit_panel(bottom, workloads, names)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hit_panel(ax: Any, workloads: dict[str, Any], names: list[str]) -> None:
    measured = [workloads[n]["systems"].get(BASE, {}).get("cache_hit_rate", 0.0) for n in names]
    optimal = [_optimal(workloads[n]["systems"]) for n in names]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], measured, 0.4, label="radixrt measured")
    ax.bar([x + 0.2 for x in xs], optimal, 0.4, label="optimal (ideal infinite cache)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("cache hit rate")
    ax.set_xticks(list(xs), names, rotation=20)
    ax.legend(fontsize=8)


def _relative(systems: dict[str, Any], system: str, reference: str) -> float:
    base = systems.get(reference, {}).get("programs_per_s")
    value = systems.get(system, {}).get("programs_per_s")
    return value / base if value and base else 0.0


def _optimal(systems: dict[str, Any]) -> float:
    figures = systems.get(BASE) or next(iter(systems.values()), {})
    return figures.get("optimal_hit_rate", 0.0)


def system_order(name: str) -> int:
    order = (
        "transformers",
        "llamacpp",
        "llamacpp-f16",
        "llamacpp-bf16",
        "radixrt-nocache",
        "radixrt-nojump",
        "radixrt-nospec",
        "radixrt",
    )
    return order.index(name) if name in order else len(order)
