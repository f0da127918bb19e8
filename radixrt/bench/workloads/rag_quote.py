"""RAG with quoted answers, laid out as SGLang's benchmark/multi_document_qa/bench_sglang.py: one user
turn holds the instruction, the question, "Documents begin.", each retrieved passage added on its
own fork and brought back with join("concate_and_append"), "Documents end.", and the question again;
the assistant answers by quoting, word for word, the passage sentence that answers it (up to 64
tokens, stopping at a newline). Temperature 0. The passages come from one shared document set, so
they recur across programs, as a retrieval corpus's do.

As in SGLang: the program's layout (chat roles, the fork/concate_and_append join of the documents,
the question asked before and after them), greedy decoding. Deviations: SGLang asks for an answer
"in three words or fewer" over a few long documents (a prefill workload); here the answer quotes the
passage (a decode workload whose output copies its context: what speculative decoding from the cache
targets), with max_tokens 64 where SGLang's answer has 16. The document set is synthetic: 16 passages
of 60-120 words, each with one sentence stating when and by whom a named landmark was built, which
the questions ask; each question retrieves 3 passages, the right one among them, in a seeded order.
The right year in the answer counts as correct.
"""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload, expect_str, variables
from radixrt.lang import ProgramState, assistant, function, gen, user_begin, user_end

PASSAGES = 16
RETRIEVED = 3
LANDMARKS = ("bridge", "tower", "museum", "gate", "market", "library", "theater", "harbor")


@function
def rag_quote(s, docs, question):
    s += user_begin()
    s += "Please answer a question according to given documents.\nQuestion: " + question + "\nDocuments begin.\n"
    forks = s.fork(len(docs))
    forks += lambda i: docs[i] + "\n"
    forks.join("concate_and_append")
    s += "Documents end.\n\nBased on the above documents, answer this question by quoting, word for word, "
    s += "the one sentence that answers it:\n" + question
    s += user_end()
    s += assistant(gen("answer", max_tokens=64, stop="\n", temperature=0))


def make_corpus(g: TextGen) -> list[tuple[str, str, str]]:
    """(passage, question, the year it answers with) for each landmark of the document set."""
    corpus, seen = [], set()
    while len(corpus) < PASSAGES:
        name, landmark = g.name(), g.choice(list(LANDMARKS))
        if (name, landmark) in seen:
            continue
        seen.add((name, landmark))
        year = str(g.randint(1400, 1950))
        fact = f"The {name} {landmark} was built in {year} by the {g.choice(['stone', 'river', 'market'])} guild."
        before, after = g.paragraph(g.randint(30, 60)), g.paragraph(g.randint(30, 60))
        question = f"When was the {name} {landmark} built, and by whom?"
        corpus.append((f"{before} {fact} {after}", question, year))
    return corpus


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    corpus = make_corpus(g)
    inputs, answers = [], []
    for _ in range(num_programs):
        target = g.randint(0, PASSAGES - 1)
        others = [i for i in range(PASSAGES) if i != target]
        picked = [target] + [others.pop(g.randint(0, len(others) - 1)) for _ in range(RETRIEVED - 1)]
        g.rng.shuffle(picked)
        inputs.append({"docs": [corpus[i][0] for i in picked], "question": corpus[target][1]})
        answers.append(corpus[target][2])
    return Batch(rag_quote, inputs, answers)


def check(state: ProgramState, inputs: dict) -> list[str]:
    return expect_str(state, "answer", max_len=1000)


def correct(state: ProgramState, year: str) -> bool:
    return year in state["answer"]


WORKLOAD = Workload(
    "rag_quote", "a question over 3 of 16 shared passages (SGLang's multi-document QA layout), a <= 64-token quote",
    build, check, variables("answer"), quick_programs=8, full_programs=32, interactive_programs=2,
    correct=correct,
)  # fmt: skip
