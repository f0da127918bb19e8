"""Multi-turn chat (SGLang's benchmark/multi_turn_chat/bench_sglang.py, short-output mode): 4
turns, each a 256-512-token user message appended to the conversation so far, then an answer of
4-8 tokens generated with ignore_eos at temperature 0; 20 conversations in a full run.

As in SGLang: plain concatenation (no chat roles), the turn and length ranges, ignore_eos, greedy.
Deviation: the messages are random common words (~1.1 tokens a word, sized to 256-512 tokens)
where SGLang draws random letters and digits until the tokenizer counts the turn's length.
SGLang's long-output mode (256-512-token answers) is not run.
"""

from __future__ import annotations

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload, completion_tokens, expect_str
from radixrt.lang import ProgramState, function, gen

TURNS = 4


@function
def multi_turns(s, qas):
    for i, (prompt, new_tokens) in enumerate(qas):
        s += prompt
        s += gen(f"answer_{i}", max_tokens=new_tokens, ignore_eos=True, temperature=0)


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    inputs = []
    for _ in range(num_programs):
        qas = [(g.paragraph(g.randint(230, 465)) + "\n", g.randint(4, 8)) for _ in range(TURNS)]
        inputs.append({"qas": qas})
    return Batch(multi_turns, inputs)


def check(state: ProgramState, inputs: dict) -> list[str]:
    problems = []
    for i, (_, new_tokens) in enumerate(inputs["qas"]):
        name = f"answer_{i}"
        problems += expect_str(state, name)
        if not problems and completion_tokens(state, name) != new_tokens:
            problems.append(f"{name} has {completion_tokens(state, name)} tokens, not {new_tokens} (ignore_eos)")
    return problems


def outputs(state: ProgramState) -> dict:
    return {f"answer_{i}": state[f"answer_{i}"] for i in range(TURNS)}


WORKLOAD = Workload(
    "multi_turn", "4 turns of 256-512-token messages, 4-8-token answers (ignore_eos)", build, check, outputs,
    quick_programs=6, full_programs=20, interactive_programs=2,
)  # fmt: skip
