"""The benchmark's targets (issues 8, 20 and 21) and how a run's results measure up to them.

Throughput ratios are programs/s with many programs in flight, radixrt over the other system,
one run, SGLang's sizes. Against every llama.cpp system measured: >= 3x programs/s, and a single
program's latency (programs run one at a time, mean) no longer than llama.cpp's. Speculative
decoding (radixrt over radixrt-nospec, output tokens/s): >= 1.2x in flight and >= 1.5x one program
at a time where outputs copy their context, >= 0.95x on open-ended generation.
"""

from __future__ import annotations

from typing import Any

VS_TRANSFORMERS = {"few_shot": 8.0, "hellaswag": 8.0, "react": 5.0, "llm_judge": 5.0, "tree_of_thought": 4.0,
                   "tip_suggestion": 4.0, "multi_turn": 3.0, "json_decode": 2.0}  # fmt: skip
VS_NOCACHE = {"few_shot": 5.0, "hellaswag": 5.0, "react": 3.0, "llm_judge": 3.0, "tree_of_thought": 2.0,
              "tip_suggestion": 2.0, "multi_turn": 1.6}  # fmt: skip
VS_NOJUMP = {"json_decode": 1.3}
# workload -> (in flight, one at a time), output tokens/s
VS_NOSPEC = {"react": (1.2, 1.5), "json_decode": (1.2, 1.5), "multi_turn": (1.2, 1.5), "rag_quote": (1.2, 1.5),
             "tree_of_thought": (0.95, 0.95), "tip_suggestion": (0.95, 0.95)}  # fmt: skip
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
        if name in VS_NOSPEC and "radixrt-nospec" in ratios:
            in_flight, alone = VS_NOSPEC[name]
            rows.append(_row(name, "out tok/s vs radixrt-nospec", in_flight,
                             _get(ratios, "radixrt-nospec", "output_tokens_per_s")))  # fmt: skip
            rows.append(_row(name, "1-program out tok/s vs radixrt-nospec", alone,
                             _get(ratios, "radixrt-nospec", "interactive_output_tokens_per_s")))  # fmt: skip
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
