"""JSON decode (SGLang's benchmark/json_decode_regex/bench_sglang.py): extract a city's record
from a ~3,000-token encyclopedia page as JSON, the keys and layout written by the program and
each value a regex-constrained gen (a string, a string, a float, an integer and a list of 3
strings; 8, 8, 8, 8 and 24 tokens at most). Temperature 0.

As in SGLang: the program, its regexes (the DSL's REGEX_STR / REGEX_FLOAT / REGEX_INT, as in
SGLang), max_tokens, the var_scope holding the record, 20 pages in a full run. Deviation: the
pages are synthetic (SGLang truncates 23 Wikipedia city pages to ~3,000 Llama-2 tokens): an
opening sentence with the city's name, country, latitude, population and three landmarks,
then ~2,500 words of random sentences. The name is in the prompt, so the share of records
that name the city is comparable across systems.
"""

from __future__ import annotations

import re

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload, variables
from radixrt.lang import REGEX_FLOAT, REGEX_INT, REGEX_STR, ProgramState, function, gen

REGEX_LIST = r"\[(" + REGEX_STR + ", )*" + REGEX_STR + r"\]"
PAGE_WORDS = 2500  # ~3,000 tokens with the opening sentence
FIELDS = {"name": REGEX_STR + ",", "country": REGEX_STR + ",", "latitude": REGEX_FLOAT + ",",
          "population": REGEX_INT + ",", "landmarks": REGEX_LIST}  # fmt: skip


@function
def json_decode(s, document):
    s += "Please extract the information of a city from the following wikipedia page.\n"
    s += "Page begin.\n" + document + "Page end.\n"
    s += "Here is the name, country, and symbol of the city in JSON format.\n"
    with s.var_scope("json_output"):
        s += "{\n"
        s += '  "name": ' + gen("name", max_tokens=8, regex=REGEX_STR + ",", temperature=0) + "\n"
        s += '  "country": ' + gen("country", max_tokens=8, regex=REGEX_STR + ",", temperature=0) + "\n"
        s += '  "latitude": ' + gen("latitude", max_tokens=8, regex=REGEX_FLOAT + ",", temperature=0) + "\n"
        s += '  "population": ' + gen("population", max_tokens=8, regex=REGEX_INT + ",", temperature=0) + "\n"
        s += '  "top 3 landmarks": ' + gen("landmarks", max_tokens=24, regex=REGEX_LIST, temperature=0) + "\n"
        s += "}\n"


def make_document(g: TextGen) -> tuple[str, str]:
    """(page, the city's name)."""
    name, country = g.name(), g.name() + "ia"
    landmarks = ", ".join(
        f"the {g.name()} {g.choice(['bridge', 'tower', 'museum', 'gate', 'market'])}" for _ in range(3)
    )
    opening = (
        f"{name} is a city in {country}, at latitude {g.randint(-60, 70)}.{g.randint(0, 99)}. It has a population "
        f"of {g.randint(20000, 9000000)}, and its best known sights are {landmarks}. "
    )
    return opening + g.paragraph(PAGE_WORDS) + "\n", name


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    pages = [make_document(g) for _ in range(num_programs)]
    return Batch(json_decode, [{"document": page} for page, _ in pages], [name for _, name in pages])


def check(state: ProgramState, inputs: dict) -> list[str]:
    """Each value matches its regex, unless it ran out of tokens first (as in SGLang, 24 tokens
    may cut a long landmark list short)."""
    return [f"{name} {state[name]!r:.60} does not match {regex!r}" for name, regex in FIELDS.items()
            if not re.fullmatch(regex, state[name]) and not _cut_short(state, name)]  # fmt: skip


def _cut_short(state: ProgramState, name: str) -> bool:
    reason = (state.get_meta_info(name) or {}).get("finish_reason") or {}
    return reason.get("type") == "length"


def correct(state: ProgramState, answer: str) -> bool:
    return state["name"] == f'"{answer}",'


WORKLOAD = Workload(
    "json_decode", "a city record from a ~3k-token page: 5 regex-constrained values in a JSON layout",
    build, check, variables("json_output"), quick_programs=2, full_programs=20, interactive_programs=1,
    correct=correct,
)  # fmt: skip
