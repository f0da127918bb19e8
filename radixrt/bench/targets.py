"""The benchmark's targets (issues 8 and 20) and how a run's results measure up to them.

Throughput ratios are programs/s with many programs in flight, radixrt over the other system,
one run, SGLang's sizes. Against every llama.cpp system measured: >= 3x programs/s, and a single
program's latency (programs run one at a time, mean) no longer than llama.cpp's.
"""

from __future__ import annotations

from typing import Any

VS_TRANSFORMERS = {"few_shot": 8.0, "hellaswag": 8.0, "react": 5.0, "llm_judge": 5.0, "tree_of_thought": 4.0,
                   "tip_suggestion": 4.0, "multi_turn": 3.0, "json_decode": 2.0}  # fmt: skip
VS_NOCACHE = {"few_shot": 5.0, "hellaswag": 5.0, "react": 3.0, "llm_judge": 3.0, "tree_of_thought": 2.0,
              "tip_suggestion": 2.0, "multi_turn": 1.6}  # fmt: skip
VS_NOJUMP = {"json_decode": 1.3}
VS_LLAMACPP = 3.0
HIT_RATE_OF_OPTIMAL = 0.95


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target the run measured: workload, target, goal, measured value, met, and
    how far short (a fraction of the goal) when missed."""
    rows = []
    for name, entry in results["workloads"].items():
        ratios = entry.get("ratios", {})
        for other, table in (("transformers", VS_TRANSFORMERS), ("radixrt-nocache", VS_NOCACHE),
                             ("radixrt-nojump", VS_NOJUMP)):  # fmt: skip
            if name in table:
                rows.append(_row(name, f"prog/s vs {other}", table[name], _get(ratios, other, "programs_per_s")))
        for other in ratios:
            if other.startswith("llamacpp"):
                rows.append(_row(name, f"prog/s vs {other}", VS_LLAMACPP, _get(ratios, other, "programs_per_s")))
                rows.append(
                    _row(name, f"1-program latency vs {other}", 1.0, _get(ratios, other, "interactive_speedup"))
                )
        base = entry["systems"].get("radixrt")
        if base and base.get("optimal_hit_rate"):
            rows.append(
                _row(name, "hit rate / optimal", HIT_RATE_OF_OPTIMAL, base["cache_hit_rate"] / base["optimal_hit_rate"])
            )
    return rows


def _get(ratios: dict[str, Any], other: str, key: str) -> float | None:
    return (ratios.get(other) or {}).get(key)


def _row(workload: str, target: str, goal: float, measured: float | None) -> dict[str, Any]:
    met = measured is not None and measured >= goal
    short = None if measured is None or met else 1.0 - measured / goal
    return {"workload": workload, "target": target, "goal": goal, "measured": measured, "met": met, "short_by": short}
