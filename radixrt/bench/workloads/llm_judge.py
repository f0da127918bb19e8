"""LLM judge (SGLang's benchmark/llm_judge/bench_sglang.py): an article judged along 6 dimensions
on 6 forks that share the article's prefix (each judgement up to 256 tokens, stopping at "END"),
then the judgements merged into one prompt for a 2-token final score. Temperature 0.

As in SGLang: the program, plain text (no chat roles), 6 dimensions with a long description each,
max_tokens 256 / 2, stop "END", 20 articles in a full run. Deviations: synthetic articles of
500-900 words (SGLang's articles.jsonl holds 20 essays of similar length, ~600-1,200 tokens);
the system prompt and the 6 dimension descriptions are our own wording of SGLang's (same
dimensions, similar lengths).
"""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload, expect_str
from radixrt.lang import ProgramState, function, gen

SYSTEM_PROMPT = (
    "Please act as a strict and impartial judge of the article below. Hold it to the highest standard "
    "and do not be lenient."
)
DIMENSIONS = (
    "Content: the substance of the article. It should be well researched, accurate and relevant to its "
    "topic, show a deep understanding of the subject, and serve a clear goal.",
    "Organization and Structure: the article needs a clear introduction, body and conclusion, and each "
    "paragraph should lead naturally into the next one.",
    "Argument and Analysis: the argument should be logical, coherent and clearly stated, and every point "
    "should rest on solid evidence and careful analysis.",
    "Clarity and Precision: the writing should be clear and concise, easy for the reader to follow, and "
    "its language precise and unambiguous.",
    "Grammar and Punctuation: correct grammar and punctuation matter in an academic text; mistakes distract "
    "the reader and can change the meaning of what is said.",
    "Referencing and Citation: every source used should be cited and referenced in the format the reader "
    "expects, which credits the authors whose work the article builds on and avoids plagiarism.",
)


@function
def multi_dimension_judge(s, article):
    s += SYSTEM_PROMPT
    s += "\n```\n" + article + "\n```\n\n"
    forks = s.fork(len(DIMENSIONS))
    for dimension, f in zip(DIMENSIONS, forks):
        f += (
            "USER: Please judge the article on the following metric. " + dimension + " Give your judgement in "
            'a single paragraph about this metric only, and end the paragraph with the word "END"\nJUDGE:'
        )
        f += gen("judgement", max_tokens=256, stop="END", temperature=0)
    forks.join()
    s += "I will judge the article on the following metrics.\n"
    for dimension, judgement in zip(DIMENSIONS, s["judgement"]):
        s += dimension.split(":")[0] + ": " + judgement.strip() + "\n"
    s += "In summary, on a scale of 1 to 10, I would give the article a score of"
    s += gen("score", max_tokens=2, temperature=0)


def make_article(g: TextGen) -> str:
    paragraphs = [g.paragraph(g.randint(80, 150)) for _ in range(g.randint(5, 7))]
    return f"{g.name()} and the {g.topic()}\n\n" + "\n\n".join(paragraphs)


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    return Batch(multi_dimension_judge, [{"article": make_article(g)} for _ in range(num_programs)])


def check(state: ProgramState, inputs: dict) -> list[str]:
    judgements = state["judgement"]
    problems = [] if len(judgements) == len(DIMENSIONS) else [f"{len(judgements)} judgements, expected 6"]
    return problems + expect_str(state, "score")


def outputs(state: ProgramState) -> dict:
    return {"judgement": state["judgement"], "score": state["score"]}


WORKLOAD = Workload(
    "llm_judge", "an article judged on 6 dimensions by fork(6) (<= 256 tokens each), merged into a score",
    build, check, outputs, quick_programs=2, full_programs=20, interactive_programs=1,
)  # fmt: skip
