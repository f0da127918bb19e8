"""The DSL programs of the load test: a mix of agentic workloads over shared prefixes.

few-shot classification (long shared examples + select), multi-turn chat with a shared system
prompt, tree of thought (fork 3, then select), a JSON answer (regex), RAG over a shared document.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import radixrt.lang as rl

FEWSHOT = "".join(
    f"Review: {text}\nSentiment: {label}\n\n"
    for text, label in [
        ("The soup was cold and the waiter rude.", "negative"),
        ("A delightful evening, we will come back.", "positive"),
        ("It was fine, nothing special.", "neutral"),
        ("Best pasta I have had in years!", "positive"),
        ("Overpriced and bland.", "negative"),
    ]
)
SYSTEM = "You are a concise assistant who answers in one sentence."
DOCUMENT = (
    "The Danube flows through ten countries, more than any other river in the world. It rises in the "
    "Black Forest and empties into the Black Sea through a wide delta that is home to many birds. "
) * 3
ITEMS = ["the service", "the dessert", "the music", "the prices", "the view", "the parking", "the coffee"]


@rl.function
def fewshot(s, item: str):
    s += FEWSHOT + f"Review: I have mixed feelings about {item}.\nSentiment:"
    s += rl.select("label", choices=[" positive", " negative", " neutral"])


@rl.function
def chat(s, first: str, second: str, max_tokens: int):
    s += rl.system(SYSTEM)
    s += rl.user(first)
    s += rl.assistant(rl.gen("a0", max_tokens=max_tokens))
    s += rl.user(second)
    s += rl.assistant(rl.gen("a1", max_tokens=max_tokens))


@rl.function
def tree_of_thought(s, question: str, max_tokens: int):
    s += rl.system(SYSTEM)
    s += rl.user(question)
    forks = s.fork(3)
    for i, f in enumerate(forks):
        f += rl.assistant(f"Idea {i + 1}:" + rl.gen("idea", max_tokens=max_tokens))
    s += rl.user("Which idea is best? " + " | ".join(f["idea"] for f in forks))
    s += rl.assistant(rl.select("best", choices=["1", "2", "3"]))


@rl.function
def json_answer(s, name: str):
    s += rl.user(f"Describe {name} as JSON.")
    s += rl.assistant(rl.gen("json", max_tokens=24, regex=r'\{"name": "[a-z]{1,8}", "age": [0-9]{1,2}\}'))


@rl.function
def rag(s, question: str, max_tokens: int):
    s += rl.system("Answer from the document.\n\n" + DOCUMENT)
    s += rl.user(question)
    s += rl.assistant(rl.gen("answer", max_tokens=max_tokens))


PROGRAMS = {"fewshot": fewshot, "chat": chat, "tot": tree_of_thought, "json": json_answer, "rag": rag}
OUTPUTS = {"fewshot": ("label",), "chat": ("a0", "a1"), "tot": ("best",), "json": ("json",), "rag": ("answer",)}


@dataclass
class ProgramCase:
    kind: str
    kwargs: dict[str, Any]

    def output(self, state: Any) -> tuple[Any, ...]:
        """What the program produced: its variables and its whole text."""
        return (*(state[name] for name in OUTPUTS[self.kind]), state.text())


def make_programs(n: int, max_tokens: int, rng: random.Random) -> list[ProgramCase]:
    """`n` programs cycling through the kinds, arguments drawn from `rng`."""
    kinds = list(PROGRAMS)
    cases = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        topic = rng.choice(ITEMS)
        kwargs: dict[str, Any] = {
            "fewshot": {"item": topic},
            "chat": {"first": f"What do you think of {topic}?", "second": "Why?", "max_tokens": max_tokens},
            "tot": {"question": f"How could we improve {topic}? ({i})", "max_tokens": max_tokens},
            "json": {"name": f"guest number {i}"},
            "rag": {"question": f"Question {i}: how many countries does the river cross?", "max_tokens": max_tokens},
        }[kind]
        cases.append(ProgramCase(kind, kwargs))
    return cases
