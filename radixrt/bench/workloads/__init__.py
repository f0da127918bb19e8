"""The benchmark workloads (SGLang paper), each a radixrt DSL program over seeded synthetic data."""

from __future__ import annotations

from radixrt.bench.workloads import (
    few_shot,
    hellaswag,
    json_decode,
    llm_judge,
    multi_turn,
    rag_quote,
    react,
    tip_suggestion,
    tree_of_thought,
)
from radixrt.bench.workloads.base import Batch, Workload

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        few_shot.WORKLOAD,
        hellaswag.WORKLOAD,
        multi_turn.WORKLOAD,
        tree_of_thought.WORKLOAD,
        tip_suggestion.WORKLOAD,
        llm_judge.WORKLOAD,
        json_decode.WORKLOAD,
        react.WORKLOAD,
        rag_quote.WORKLOAD,
    )
}

__all__ = ["WORKLOADS", "Batch", "Workload"]
