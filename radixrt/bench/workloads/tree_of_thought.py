"""Tree of thought: fork 3 plans, fork 3 answers under each plan, fork 3 scores under each answer
(3 + 9 + 27 short generations per program, each branch reusing its parent's prefix)."""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload
from radixrt.lang import ProgramState, assistant, function, gen, system, user

WIDTH = 3
SYSTEM_PROMPT = "You solve problems step by step: propose plans, carry them out, then judge the results."


@function
def tree_of_thought(s, question):
    s += system(SYSTEM_PROMPT)
    s += user(question)
    plans = s.fork(WIDTH)
    for i, p in enumerate(plans):
        p += user(f"Propose plan {i + 1} to solve it, in one sentence.")
        p += assistant(gen("plan", max_tokens=12, temperature=0))
    answers = [a for p in plans for a in _branch(p, "Carry out the plan. Attempt", "answer", 12)]
    scores = [c for a in answers for c in _branch(a, "Rate this attempt from 1 to 10. Reviewer", "score", 3)]
    s["scores"] = [c["score"] for c in scores]  # waits for the 27 leaves


def _branch(parent: ProgramState, instruction: str, var: str, max_tokens: int) -> list[ProgramState]:
    """Fork `parent` WIDTH ways; each child gets a numbered instruction and one generation."""
    children = parent.fork(WIDTH)
    for i, child in enumerate(children):
        child += user(f"{instruction} {i + 1}:")
        child += assistant(gen(var, max_tokens=max_tokens, temperature=0))
    return list(children)


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    inputs = [{"question": f"{g.sentence(20, 40)} {g.words(8)}?"} for _ in range(num_programs)]
    return Batch(tree_of_thought, inputs)


def check(state: ProgramState, inputs: dict) -> list[str]:
    scores = state["scores"]
    if len(scores) != WIDTH**3:
        return [f"{len(scores)} leaf scores, expected {WIDTH**3}"]
    if not all(isinstance(x, str) for x in scores):
        return ["a leaf score is not text"]
    return []


WORKLOAD = Workload("tree_of_thought", "fork 3 x 3 levels: plans, answers, scores (39 short gens)", build, check, 4, 40)
