"""ReAct agent (SGLang's benchmark/react/bench_sglang.py): a fixed ~2,000-token prompt of 6
worked Thought/Action/Observation examples, a question, then a replayed trace: at each step the
model generates a thought and an action on a fork (up to 200 tokens, stopping at "Observation")
and the recorded step is appended, so every system sees the same prompts; one more generation
after the last step. Temperature 0.

As in SGLang: the replay structure (fork(1) + join per step), the prompt format, max_tokens 200,
the stop string; 10 questions in a full run (SGLang's default; its file holds 100).
Deviations: HotpotQA traces cannot be downloaded here, so the examples and the traces are
synthetic sentences in the same format (2-5 steps a question, 30-120-word observations); the
instruction header is the ReAct paper's, as in SGLang.
"""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload
from radixrt.lang import ProgramState, function, gen

EXAMPLES = 6
HEADER = (
    "Solve a question answering task with interleaving Thought, Action, Observation steps. Thought can "
    "reason about the current situation, and Action can be three types: \n(1) Search[entity], which "
    "searches the exact entity on Wikipedia and returns the first paragraph if it exists. If not, it will "
    "return some similar entities to search.\n(2) Lookup[keyword], which returns the next sentence "
    "containing keyword in the current passage.\n(3) Finish[answer], which returns the answer and finishes "
    "the task.\nHere are some examples.\n"
)


@function
def webthink(s, template, question, triplets):
    s += template + question
    for i in range(1, len(triplets) + 2):
        s += "\nThought " + str(i) + ":"
        step = s.fork(1)
        step[0] += gen(f"thought_action_{i}", max_tokens=200, stop="Observation", temperature=0)
        step.join()
        if i > len(triplets):
            break
        thought, action, observation = triplets[i - 1]
        s += f" {thought}\nAction {i}: {action}\nObservation {i}: {observation}"


def make_steps(g: TextGen, count: int, observation_words: tuple[int, int]) -> list[tuple[str, str, str]]:
    steps = []
    for _ in range(count - 1):
        action = f"{g.choice(['Search', 'Lookup'])}[{g.name()} {g.topic()}]"
        steps.append((g.sentence(10, 24), action, g.paragraph(g.randint(*observation_words))))
    return steps + [(g.sentence(10, 24), f"Finish[{g.topic()}]", "Episode finished.")]


def make_template(g: TextGen) -> str:
    parts = [HEADER]
    for _ in range(EXAMPLES):
        parts.append(f"Question: {g.sentence(10, 24)[:-1]}?")
        for i, (thought, action, observation) in enumerate(make_steps(g, g.randint(3, 5), (12, 40)), 1):
            parts.append(f"\nThought {i}: {thought}\nAction {i}: {action}\nObservation {i}: {observation}")
        parts.append("\n")
    return "".join(parts)


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    template = make_template(g)
    inputs = [{"question": f"Question: {g.sentence(10, 24)[:-1]}?", "triplets": make_steps(g, g.randint(2, 5), (30, 120))}
              for _ in range(num_programs)]  # fmt: skip
    return Batch(webthink.bind(template=template), inputs)


def check(state: ProgramState, inputs: dict) -> list[str]:
    problems = []
    for i in range(1, len(inputs["triplets"]) + 2):
        generated = state[f"thought_action_{i}"]  # the join gathers the one branch's text into a list
        if len(generated) != 1 or not isinstance(generated[0], str):
            problems.append(f"step {i}: expected one generated thought/action, got {generated!r:.60}")
    return problems


def outputs(state: ProgramState) -> dict:
    i, out = 1, {}
    while f"thought_action_{i}" in state:
        out[f"thought_action_{i}"] = state[f"thought_action_{i}"]
        i += 1
    return out


WORKLOAD = Workload(
    "react", "~2k-token ReAct prompt + a replayed 2-5-step trace, <= 200-token thoughts", build, check, outputs,
    quick_programs=2, full_programs=10, interactive_programs=1,
)  # fmt: skip
