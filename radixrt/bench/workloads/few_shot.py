"""MMLU-style few-shot: one ~1,500-token block of 5 worked examples shared by every question;
the answer is one generated token."""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload, completion_tokens, expect_str
from radixrt.lang import ProgramState, function, gen

LETTERS = "ABCD"
SHOTS = 5
WORDS_PER_SHOT = 280  # with the question's choices: 5 shots ≈ 1,500 tokens


@function
def few_shot_mmlu(s, examples, question):
    s += examples + question
    s += gen("answer", max_tokens=1, temperature=0)


def format_question(g: TextGen, question_words: int, answer: str | None) -> str:
    text = f"Question: {g.words(question_words)}?\n"
    text += "".join(f"{letter}. {g.words(g.randint(3, 8))}\n" for letter in LETTERS)
    return text + "Answer:" + (f" {answer}\n\n" if answer is not None else "")


def make_examples(g: TextGen) -> str:
    header = f"The following are multiple choice questions (with answers) about {g.topic()}.\n\n"
    return header + "".join(format_question(g, WORDS_PER_SHOT - 30, g.choice(list(LETTERS))) for _ in range(SHOTS))


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    examples = make_examples(g)
    inputs = [{"question": format_question(g, g.randint(15, 40), None)} for _ in range(num_programs)]
    return Batch(few_shot_mmlu.bind(examples=examples), inputs)


def check(state: ProgramState, inputs: dict) -> list[str]:
    problems = expect_str(state, "answer")
    if not problems and completion_tokens(state, "answer") > 1:
        problems.append("the answer is longer than one token")
    return problems


WORKLOAD = Workload(
    "few_shot", "5-shot MMLU-style block (~1.5k tokens) shared by all questions; 1-token answer", build, check, 16, 200
)
