"""Results: ratios between systems, machine description, the JSON file and the PNG chart.

JSON shape: {"workloads": {NAME: {"systems": {SYSTEM: figures}, "ratios": {...}}},
"micro": {...}, "machine": {...}, "settings": {...}}.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from radixrt.bench.metrics import ratio

BASE = "radixrt"
COMPARED = ("transformers", "radixrt-nocache", "radixrt-nojump")
_RATIO_KEYS = ("programs_per_s", "output_tokens_per_s", "latency_p50_speedup", "latency_p99_speedup")


def ratios(systems: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """For each other system: radixrt's throughput over its, and its latency over radixrt's
    (so every number > 1 means radixrt is faster)."""
    base = systems.get(BASE)
    out: dict[str, dict[str, float | None]] = {}
    for other in COMPARED:
        theirs = systems.get(other)
        if base is None or theirs is None:
            continue
        out[f"{BASE}/{other}"] = {
            "programs_per_s": ratio(base["programs_per_s"], theirs["programs_per_s"]),
            "output_tokens_per_s": ratio(base["output_tokens_per_s"], theirs["output_tokens_per_s"]),
            "latency_p50_speedup": ratio(theirs["latency_p50_s"], base["latency_p50_s"]),
            "latency_p99_speedup": ratio(theirs["latency_p99_s"], base["latency_p99_s"]),
        }
    return out


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
    """Two panels: programs/s per system relative to transformers (log scale), and radixrt's
    measured cache hit rate beside the optimal one, per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    workloads = results["workloads"]
    names = list(workloads)
    systems = sorted({s for w in workloads.values() for s in w["systems"]}, key=_system_order)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 1.3 * len(names) + 2), 8))
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        values = [_relative(workloads[n]["systems"], system) for n in names]
        top.bar([x + i * width for x in range(len(names))], values, width, label=system)
    top.set_yscale("log")
    top.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    top.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    top.axhline(1.0, color="grey", linewidth=0.8)
    top.set_ylabel("programs/s vs transformers")
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


def _relative(systems: dict[str, Any], system: str) -> float:
    base = systems.get("transformers", {}).get("programs_per_s")
    value = systems.get(system, {}).get("programs_per_s")
    return value / base if value and base else 0.0


def _optimal(systems: dict[str, Any]) -> float:
    figures = systems.get(BASE) or next(iter(systems.values()), {})
    return figures.get("optimal_hit_rate", 0.0)


def _system_order(name: str) -> int:
    order = ("transformers", "radixrt-nocache", "radixrt-nojump", "radixrt")
    return order.index(name) if name in order else len(order)


def markdown(results: dict[str, Any]) -> str:
    """The per-workload figures and the micro-benchmarks as Markdown tables (for BENCHMARKS.md)."""
    lines = ["| workload | system | programs | prog/s | out tok/s | p50 s | p99 s | hit rate | optimal | busy | ok |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, entry in results["workloads"].items():
        for system in sorted(entry["systems"], key=_system_order, reverse=True):
            f = entry["systems"][system]
            lines.append(
                f"| {name} | {system} | {f['programs']} | {f['programs_per_s']:.2f} | {f['output_tokens_per_s']:.1f} "
                f"| {f['latency_p50_s']:.2f} | {f['latency_p99_s']:.2f} | {f['cache_hit_rate']:.0%} "
                f"| {f['optimal_hit_rate']:.0%} | {_share(f.get('server_busy'))} | {f['ok_programs']}/{f['programs']} |"
            )
    lines += ["", "| workload | vs | programs/s | output tok/s | p50 latency | p99 latency |",
              "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, entry in results["workloads"].items():
        for pair, r in entry["ratios"].items():
            cells = [r[k] for k in _RATIO_KEYS]
            lines.append(f"| {name} | {pair.split('/')[1]} | " + " | ".join(_times(c) for c in cells) + " |")
    if "micro" in results:
        lines += ["", _micro_markdown(results["micro"])]
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _micro_markdown(m: dict[str, Any]) -> str:
    base = m.get("transformers")
    rows = [("prefill, 1,024-token prompt", m["prefill_tokens_per_s"], base and base["prefill_tokens_per_s"])]
    rows += [(f"decode, batch {b}", v, base and base["decode_tokens_per_s"].get(b))
             for b, v in m["decode_tokens_per_s"].items()]  # fmt: skip
    batch = m["json_batch"]
    rows += [
        (f"JSON-schema decode, batch {batch} (jump-forward on)", m["json_decode_tokens_per_s"], None),
        (f"JSON-schema decode, batch {batch} (jump-forward off)", m["json_nojump_decode_tokens_per_s"], None),
        (f"unconstrained decode, batch {batch}, same length", m["unconstrained_decode_tokens_per_s"], None),
    ]
    lines = ["| engine micro-benchmark | radixrt tokens/s | transformers tokens/s | ratio |", "|---|---:|---:|---:|"]
    for name, ours, theirs in rows:
        other = f"{theirs:.0f}" if theirs else "-"
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"
        lines.append(f"| {name} | {ours:.0f} | {other} | {ratio} |")
    return "\n".join(lines)
