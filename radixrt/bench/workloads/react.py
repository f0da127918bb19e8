"""ReAct agent (SGLang's react): a long fixed template of worked Thought/Action/Observation examples,
a question, then a replayed trace: at each step the model generates a thought and action (on a
fork, for timing), and the recorded step is appended, so every system sees the same prompts."""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload, expect_str
from radixrt.lang import ProgramState, function, gen

EXAMPLES = 6
STEPS = 3
HEADER = (
    "Solve a question answering task with interleaving Thought, Action, Observation steps. Thought can "
    "reason about the current situation, and Action can be three types:\n(1) Search[entity], which "
    "searches the exact entity on Wikipedia and returns the first paragraph if it exists.\n(2) "
    "Lookup[keyword], which returns the next sentence containing keyword in the current passage.\n(3) "
    "Finish[answer], which returns the answer and finishes the task.\nHere are some examples.\n"
)


@function
def react(s, template, question, steps):
    s += template + f"Question: {question}\n"
    for i, (thought, action, observation) in enumerate(steps, 1):
        s += f"Thought {i}:"
        step = s.fork(1)
        step[0] += gen(f"step_{i}", max_tokens=16, stop="Observation", temperature=0)
        step.join()
        s += f" {thought}\nAction {i}: {action}\nObservation {i}: {observation}\n"
    s += f"Thought {len(steps) + 1}:" + gen("final", max_tokens=16, stop="Observation", temperature=0)


def make_steps(g: TextGen, count: int) -> list[tuple[str, str, str]]:
    actions = ["Search", "Lookup"]
    steps = [(g.sentence(8, 16), f"{g.choice(actions)}[{g.name()} {g.topic()}]", g.paragraph(40)) for _ in range(count)]
    return steps[:-1] + [(steps[-1][0], f"Finish[{g.topic()}]", "Episode finished.")]


def make_template(g: TextGen) -> str:
    parts = [HEADER]
    for _ in range(EXAMPLES):
        parts.append(f"Question: {g.sentence(10, 20)[:-1]}?\n")
        for i, (thought, action, observation) in enumerate(make_steps(g, STEPS + 1), 1):
            parts.append(f"Thought {i}: {thought}\nAction {i}: {action}\nObservation {i}: {observation}\n")
        parts.append("\n")
    return "".join(parts)


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    template = make_template(g)
    inputs = [{"question": g.sentence(10, 20)[:-1] + "?", "steps": make_steps(g, STEPS)} for _ in range(num_programs)]
    return Batch(react.bind(template=template), inputs)


def check(state: ProgramState, inputs: dict) -> list[str]:
    problems = expect_str(state, "final")
    for i in range(1, STEPS + 1):
        generated = state[f"step_{i}"]  # the join gathers the one branch's text into a list
        if len(generated) != 1 or not isinstance(generated[0], str):
            problems.append(f"step {i}: expected one generated thought/action, got {generated!r:.60}")
    return problems


WORKLOAD = Workload("react", "long fixed ReAct template + a replayed 3-step trace", build, check, 2, 100)
