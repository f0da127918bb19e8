"""LLM judge (SGLang's llm_judge): an article judged along 6 dimensions on 6 forks that share the
article's prefix, then the judgements merged into one prompt for a final score."""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload, expect_str
from radixrt.lang import ProgramState, function, gen

DIMENSIONS = (
    "Content: the depth and accuracy of the information",
    "Organization: how well the article is structured",
    "Style: the clarity and tone of the writing",
    "Originality: whether the article says something new",
    "Evidence: the support given for its claims",
    "Audience: how well it suits its readers",
)
SYSTEM_PROMPT = "You are an expert editor. You judge articles carefully and fairly.\n\nThe article:\n"


@function
def llm_judge(s, article):
    s += SYSTEM_PROMPT + "```\n" + article + "\n```\n\n"
    forks = s.fork(len(DIMENSIONS))
    for dimension, f in zip(DIMENSIONS, forks):
        f += f"USER: Judge the article on {dimension}, in one short paragraph. End with the word END.\nJUDGE:"
        f += gen("judgement", max_tokens=24, stop="END", temperature=0)
    forks.join()
    s += "I judged the article on these dimensions.\n"
    for dimension, judgement in zip(DIMENSIONS, s["judgement"]):
        s += dimension.split(":")[0] + ": " + judgement.strip() + "\n"
    s += "In summary, on a scale of 1 to 10, I give the article a score of"
    s += gen("score", max_tokens=3, temperature=0)


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    articles = [f"# {g.name()} {g.topic()}\n\n" + g.paragraph(g.randint(250, 400)) for _ in range(num_programs)]
    return Batch(llm_judge, [{"article": a} for a in articles])


def check(state: ProgramState, inputs: dict) -> list[str]:
    judgements = state["judgement"]
    problems = [] if len(judgements) == len(DIMENSIONS) else [f"{len(judgements)} judgements, expected 6"]
    return problems + expect_str(state, "score")


WORKLOAD = Workload(
    "llm_judge", "article judged on 6 dimensions by fork(6), merged into a final score", build, check, 6, 60
)
