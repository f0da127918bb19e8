"""Tree of thought (SGLang's benchmark/tree_of_thought_v0/bench_sglang.py): a math word problem;
the user asks for a plan and the state forks 3 ways, each plan is followed by a request to carry
it out and forks 3 ways, each answer by a request to score it and forks 3 ways: 3 + 9 + 27
assistant turns per program, each up to 256 tokens at temperature 0.3.

As in SGLang: chat roles, no system prompt, the user turn added before each fork, 3 branches at
3 levels, max_tokens 256 and temperature 0.3 for every gen. Deviations: a full run has 10
questions (SGLang's default is 200: at ~4k generated tokens a question, llama.cpp alone would
need ~7 hours on 2 cores; `--num-programs` runs more); GSM8K cannot be downloaded here, so the questions are synthetic two-step arithmetic
word problems; the three user turns are our own wording of SGLang's (same intent and length).
Sampled, not greedy: its outputs are not compared across systems.
"""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload
from radixrt.lang import ProgramState, assistant, function, gen, user

BRANCHES = 3
MAX_TOKENS = 256
TEMPERATURE = 0.3
PLAN = (
    "Write a high-level plan for solving the question below. For now, only say which method and idea you "
    "will use; you may restate the facts it gives, but do not calculate anything yet. Keep the plan short, "
    "under 80 words. Question: "
)
EXECUTE = (
    "Good plan. Now follow it step by step with the real numbers, do the arithmetic, and state the final "
    "answer. Keep the solution short."
)
REFLECT = (
    "Now check your own solution rigorously for mistakes and rate it on a scale from 1 to 5, where 5 means "
    "certainly correct."
)


def _branch(parent: ProgramState, prompt: str, var: str) -> list[ProgramState]:
    parent += user(prompt)
    children = parent.fork(BRANCHES)
    for child in children:
        child += assistant(gen(var, max_tokens=MAX_TOKENS, temperature=TEMPERATURE))
    return list(children)


@function
def tree_search(s, question):
    plans = _branch(s, PLAN + question, "plan")
    answers = [a for p in plans for a in _branch(p, EXECUTE, "answer")]
    scores = [c for a in answers for c in _branch(a, REFLECT, "score")]
    s["scores"] = [c["score"] for c in scores]  # waits for the 27 leaves


def word_problem(g: TextGen) -> str:
    name, thing = g.name(), g.choice(["apples", "books", "stamps", "coins", "marbles", "tickets"])
    a, b, c = g.randint(3, 60), g.randint(2, 9), g.randint(1, 20)
    return (
        f"{name} has {a} {thing}. Each week {name} buys {b} times as many {thing} as a friend gives away, "
        f"and the friend gives away {c} {thing} a week. How many {thing} does {name} have after 3 weeks?"
    )


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    return Batch(tree_search, [{"question": word_problem(g)} for _ in range(num_programs)])


def check(state: ProgramState, inputs: dict) -> list[str]:
    scores = state["scores"]
    if len(scores) != BRANCHES**3:
        return [f"{len(scores)} leaf scores, expected {BRANCHES**3}"]
    if not all(isinstance(x, str) for x in scores):
        return ["a leaf score is not text"]
    return []


def outputs(state: ProgramState) -> dict:
    return {"scores": state["scores"]}


WORKLOAD = Workload(
    "tree_of_thought", "3 x 3 x 3 forks: plans, answers, scores (39 gens of <= 256 tokens, temperature 0.3)",
    build, check, outputs, quick_programs=1, full_programs=10, interactive_programs=1, greedy=False,
)  # fmt: skip
