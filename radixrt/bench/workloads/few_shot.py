"""MMLU 5-shot (SGLang's benchmark/mmlu/bench_sglang.py): per subject, a block of 5 worked
multiple-choice examples shared by every question of the subject; the answer is 1 token at
temperature 0 (`examples + question + gen("answer")`, run with max_new_tokens=1).

As in SGLang: 5 shots, the "The following are multiple choice questions (with answers) about
..." header, the question then "A. ..." to "D. ..." and "Answer:" lines, questions in subject
order. Deviations (MMLU cannot be downloaded here):
- synthetic questions of common words, MMLU-like lengths (15-120 words, 1-10-word choices), so a
  block is ~600 tokens; SGLang drops shots while a block exceeds 1,536 (tiktoken) tokens,
  which these blocks never reach;
- each question asks which option repeats a phrase quoted in it, so the prompt determines the
  answer and accuracy is comparable across systems (MMLU's answers need world knowledge); the
  embedded 135M model answers near chance (25-30%, mostly " C"), so here the program-by-program
  comparison of the answers is the stronger check;
- SUBJECT_QUESTIONS questions per subject (MMLU's 57 test subjects hold 100-1,534 each); a full
  run covers full_programs questions, not MMLU's 14,042.
"""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload, completion_tokens, expect_str, variables
from radixrt.lang import ProgramState, function, gen

LETTERS = "ABCD"
SHOTS = 5
SUBJECT_QUESTIONS = 100


@function
def few_shot_mmlu(s, examples, question):
    s += examples + question + gen("answer", max_tokens=1, temperature=0)


def make_question(g: TextGen) -> tuple[str, str]:
    """(question text ending in "Answer:", the right letter)."""
    options = [g.words(g.randint(1, 10)) for _ in LETTERS]
    answer = g.randint(0, len(LETTERS) - 1)
    text = f'{g.sentence(15, 120)[:-1]}. Which option repeats the phrase "{options[answer]}"?'
    text += "".join(f"\n{letter}. {option}" for letter, option in zip(LETTERS, options))
    return text + "\nAnswer:", LETTERS[answer]


def make_examples(g: TextGen) -> str:
    header = f"The following are multiple choice questions (with answers) about {g.topic()}.\n\n"
    return header + "".join(f"{q} {a}\n\n" for q, a in (make_question(g) for _ in range(SHOTS)))


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    inputs, answers = [], []
    for i in range(num_programs):
        if i % SUBJECT_QUESTIONS == 0:
            examples = make_examples(g)
        question, answer = make_question(g)
        inputs.append({"examples": examples, "question": question})
        answers.append(answer)
    return Batch(few_shot_mmlu, inputs, answers)


def check(state: ProgramState, inputs: dict) -> list[str]:
    problems = expect_str(state, "answer")
    if not problems and completion_tokens(state, "answer") > 1:
        problems.append("the answer is longer than one token")
    return problems


def correct(state: ProgramState, answer: str) -> bool:
    return state["answer"].strip()[:1] == answer


WORKLOAD = Workload(
    "few_shot", "MMLU 5-shot: a subject's ~600-token block shared by its questions; 1-token answer", build, check,
    variables("answer"), quick_programs=64, full_programs=1000, interactive_programs=4, correct=correct,
)  # fmt: skip
