"""HellaSwag 20-shot (SGLang's benchmark/hellaswag/bench_sglang.py): 20 solved examples
("activity: context ending") shared by every question, then `select` among the question's 4
endings (one scoring request per question; SGLang's default length-normalized logprobs).

As in SGLang: 20 shots, the "label: ctx " + ending format, 4 endings, temperature 0, 200
questions in a full run. Deviation (HellaSwag cannot be downloaded here): synthetic items of
HellaSwag-like lengths (contexts 30-60 words, endings 10-22 words, ~1,300 tokens of shots) in
which the context restates the start of its first sentence and the right ending completes it
word for word; the other endings are random text of the same length. The prompt determines the
answer, so accuracy is comparable across systems.
"""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload, variables
from radixrt.lang import ProgramState, function, select

SHOTS = 20
NUM_CHOICES = 4


@function
def few_shot_hellaswag(s, examples, question, choices):
    s += examples + question
    s += select("answer", choices=choices)


def make_item(g: TextGen) -> tuple[str, list[str], int]:
    """(context, endings, index of the right ending)."""
    first = g.words(g.randint(14, 26)).split()
    cut = g.randint(4, 8)
    right = " ".join(first[cut:]) + "."
    context = (
        f"{g.name()} {g.topic()}: {' '.join(first).capitalize()}. {g.sentence(8, 20)} Then {' '.join(first[:cut])} "
    )
    endings = [g.words(len(first) - cut) + "." for _ in range(NUM_CHOICES - 1)]
    answer = g.randint(0, NUM_CHOICES - 1)
    endings.insert(answer, right)
    return context, endings, answer


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    shots = []
    for _ in range(SHOTS):
        context, endings, answer = make_item(g)
        shots.append(context + endings[answer] + "\n\n")
    inputs, answers = [], []
    for _ in range(num_programs):
        context, endings, answer = make_item(g)
        inputs.append({"question": context, "choices": endings})
        answers.append(endings[answer])
    return Batch(few_shot_hellaswag.bind(examples="".join(shots)), inputs, answers)


def check(state: ProgramState, inputs: dict) -> list[str]:
    meta = state.get_meta_info("answer") or {}
    scores = meta.get("scores") or []
    if len(scores) != NUM_CHOICES:
        return [f"select scored {len(scores)} endings, expected {NUM_CHOICES}"]
    return []


def correct(state: ProgramState, answer: str) -> bool:
    return state["answer"] == answer


WORKLOAD = Workload(
    "hellaswag", "20-shot context (~1.3k tokens) shared by all questions; select among 4 endings", build, check,
    variables("answer"), quick_programs=12, full_programs=200, interactive_programs=4, correct=correct,
)  # fmt: skip
