"""Multi-turn chat: a shared system prompt, then 4 turns of a 256-512-token user message of random
text and a 4-8-token answer; each turn's prompt is the whole conversation so far."""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload, completion_tokens, expect_str
from radixrt.lang import ProgramState, assistant, function, gen, system, user

TURNS = 4
SYSTEM_PROMPT = "You are a concise assistant. Answer every message in a few words."


@function
def multi_turn(s, turns):
    s += system(SYSTEM_PROMPT)
    for i, (message, answer_tokens) in enumerate(turns):
        s += user(message)
        s += assistant(gen(f"answer_{i}", max_tokens=answer_tokens, temperature=0))


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    inputs = []
    for _ in range(num_programs):
        # ~1.1 tokens a word: 230-465 words ≈ 256-512 tokens
        turns = [(g.paragraph(g.randint(230, 465)), g.randint(4, 8)) for _ in range(TURNS)]
        inputs.append({"turns": turns})
    return Batch(multi_turn, inputs)


def check(state: ProgramState, inputs: dict) -> list[str]:
    problems = []
    for i, (_, answer_tokens) in enumerate(inputs["turns"]):
        name = f"answer_{i}"
        problems += expect_str(state, name)
        if not problems and completion_tokens(state, name) > answer_tokens:
            problems.append(f"{name} has more than {answer_tokens} tokens")
    return problems


WORKLOAD = Workload("multi_turn", "4-turn chat, 256-512-token user messages, 4-8-token answers", build, check, 4, 100)
