"""Tip suggestion (SGLang's benchmark/tip_suggestion/bench_sglang.py, skeleton of thought): the
assistant lists 5 tips one after another (each up to 24 tokens, stopping at "." or a newline);
as soon as a tip is out, a separate program expands it into a paragraph (up to 128 tokens,
stopping at a blank line) after a fixed 3-example prompt that every expansion shares; the
paragraphs are appended to the list as they finish. Temperature 0 throughout.

As in SGLang: the program and its lengths, the expansions as separate programs that run while
the next tips are generated (SGLang's nested call returns at once; here a thread per expansion),
100 topics in a full run. Deviations: synthetic two-word topics (SGLang's topic.jsonl holds
everyday topics); the 3 expansion examples are our own text of the same shape and length.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload, expect_str
from radixrt.lang import ProgramState, function, gen

NUM_TIPS = 5
EXPAND_EXAMPLES = """Please expand a tip for a topic into a detailed paragraph.

Topic: keeping houseplants alive
Tip: Water less often than you think
Paragraph: Most houseplants die from too much water, not too little. Before you water, push a finger into the soil up to the second knuckle; if it still feels damp, wait a few days. Pots need holes in the bottom so extra water can drain away, and saucers should be emptied after watering. In winter, when plants grow slowly, they need even less, so stretch the time between waterings.

Topic: learning a new language
Tip: Practice a little every day
Paragraph: Short daily sessions beat long weekly ones, because memory is built by repetition spread over time. Set aside fifteen minutes each morning to review words and listen to a podcast or song in the language. Use a flashcard app that shows you words just before you would forget them, and say new phrases out loud so your mouth learns them as well as your eyes.

Topic: saving money on groceries
Tip: plan your meals before you shop
Paragraph: A written plan for the week turns shopping into a short list instead of a wander through the aisles. Check what is already in the fridge and cupboards, choose meals that share ingredients, and write down only what is missing. Shopping with a list cuts impulse buys, and cooking what you planned means less food goes bad before you eat it.

Topic: """


@function
def expand_tip(s, topic, tip):
    s += EXPAND_EXAMPLES + topic + "\nTip: " + tip + "\nParagraph:"
    s += gen("paragraph", max_tokens=128, stop=["\n\n"], temperature=0)


@function
def suggest_tips(s, topic):
    s += "Please act as a helpful assistant. Your job is to provide users with useful tips on a specific topic.\n"
    s += "USER: Give some tips for " + topic + ".\n"
    s += f"ASSISTANT: Okay. Here are {NUM_TIPS} concise tips, each under 8 words:\n"
    backend = s.stream_executor.backend  # the expansions are programs of their own on the same backend
    with ThreadPoolExecutor(NUM_TIPS, thread_name_prefix="radixrt-bench-tip") as pool:
        expansions = []
        for i in range(1, NUM_TIPS + 1):
            s += f"{i}." + gen(f"tip_{i}", max_tokens=24, stop=[".", "\n"], temperature=0) + ".\n"
            expansions.append(pool.submit(expand_tip.run, topic=topic, tip=s[f"tip_{i}"], backend=backend))
        for i, expansion in enumerate(expansions, 1):
            s += f"Tip {i}:" + expansion.result()["paragraph"] + "\n"


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    return Batch(suggest_tips, [{"topic": g.topic()} for _ in range(num_programs)])


def check(state: ProgramState, inputs: dict) -> list[str]:
    problems = [p for i in range(1, NUM_TIPS + 1) for p in expect_str(state, f"tip_{i}")]
    if state.text().count("\nTip ") < NUM_TIPS:
        problems.append(f"expected {NUM_TIPS} expanded tips in the text")
    return problems


def outputs(state: ProgramState) -> dict:
    return {"text": state.text()}  # the tips and, appended, every expansion's paragraph


WORKLOAD = Workload(
    "tip_suggestion", "5 tips in sequence, each expanded by its own program after a shared 3-shot prompt",
    build, check, outputs, quick_programs=6, full_programs=100, interactive_programs=2,
)  # fmt: skip
