"""HellaSwag-style: a 20-shot context of (context, ending) pairs shared by every question, then
`select` among 4 candidate endings (one scoring request per question)."""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload
from radixrt.lang import ProgramState, function, select

SHOTS = 20
NUM_CHOICES = 4


@function
def hellaswag(s, examples, context, endings):
    s += examples + context
    s += select("ending", choices=endings)


def make_item(g: TextGen) -> tuple[str, list[str]]:
    context = f"{g.name()}: {g.sentence(12, 24)[:-1]},"
    endings = [" " + g.sentence(6, 14) for _ in range(NUM_CHOICES)]
    return context, endings


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    shots = []
    for _ in range(SHOTS):
        context, endings = make_item(g)
        shots.append(context + endings[0] + "\n\n")
    inputs = []
    for _ in range(num_programs):
        context, endings = make_item(g)
        inputs.append({"context": context, "endings": endings})
    return Batch(hellaswag.bind(examples="".join(shots)), inputs)


def check(state: ProgramState, inputs: dict) -> list[str]:
    meta = state.get_meta_info("ending") or {}
    scores = meta.get("scores") or []
    if len(scores) != NUM_CHOICES:
        return [f"select scored {len(scores)} endings, expected {NUM_CHOICES}"]
    if state["ending"] not in inputs["endings"]:
        return [f"selected {state['ending']!r}, not one of the endings"]
    return []


WORKLOAD = Workload(
    "hellaswag", "20-shot context shared by all questions; select among 4 endings", build, check, 8, 200
)
