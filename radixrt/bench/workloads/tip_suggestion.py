"""Skeleton of thought (SGLang's tip_suggestion): 5 short tips generated in order, then each tip
expanded into a paragraph by a nested @function, all 5 in parallel on forks of the tip list."""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload, expect_str
from radixrt.lang import ProgramState, function, gen

NUM_TIPS = 5
PREAMBLE = "Please act as a helpful assistant. Your job is to provide users with useful tips on a specific topic.\n"


@function
def expand_tip(s, topic, number, tip):
    s += f"\nNow expand tip {number} ({tip.strip()}) about {topic} into a detailed paragraph.\nParagraph:"
    s += gen("paragraph", max_tokens=24, stop=["\n\n"], temperature=0)


@function
def tip_suggestion(s, topic):
    s += PREAMBLE
    s += f"USER: Give some tips for {topic}.\n"
    s += f"ASSISTANT: Okay. Here are five tips for {topic}.\n\n"
    for i in range(1, NUM_TIPS + 1):
        s += f"{i}." + gen(f"tip_{i}", max_tokens=16, stop=[".", "\n"], temperature=0) + ".\n"
    forks = s.fork(NUM_TIPS)
    for i, f in enumerate(forks, 1):
        expand_tip(f, topic=topic, number=i, tip=s[f"tip_{i}"])
    forks.join()
    s["paragraphs"] = [f["paragraph"] for f in forks]


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    return Batch(tip_suggestion, [{"topic": g.topic()} for _ in range(num_programs)])


def check(state: ProgramState, inputs: dict) -> list[str]:
    problems = [p for i in range(1, NUM_TIPS + 1) for p in expect_str(state, f"tip_{i}")]
    paragraphs = state["paragraphs"]
    if len(paragraphs) != NUM_TIPS or not all(isinstance(p, str) for p in paragraphs):
        problems.append(f"expected {NUM_TIPS} paragraphs of text, got {paragraphs!r:.80}")
    return problems


WORKLOAD = Workload(
    "tip_suggestion", "5 tips, each expanded by a nested @function on 5 parallel forks", build, check, 8, 60
)
