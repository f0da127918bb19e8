"""JSON decode (SGLang's json_decode): extract a town's record from a synthetic wiki page under a
JSON schema with an enum, bounded integers and a nested object (jump-forward skips the fixed keys)."""

from __future__ import annotations

import json

import jsonschema

from radixrt.bench.synthetic import TextGen
from radixrt.bench.workloads.base import Batch, Workload
from radixrt.lang import ProgramState, function, gen

KINDS = ["city", "town", "village"]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "[A-Z][a-z]{1,15}"},
        "kind": {"enum": KINDS},
        "location": {
            "type": "object",
            "properties": {
                "country": {"type": "string", "pattern": "[A-Z][a-z]{1,15}"},
                "coastal": {"type": "boolean"},
            },
            "required": ["country", "coastal"],
        },
        "population": {"type": "integer", "minimum": 0, "maximum": 9999999},
        "founded": {"type": "integer", "minimum": 800, "maximum": 2024},
    },
    "required": ["name", "kind", "location", "population", "founded"],
}
# NOTE: every field is bounded and ASCII, so a record is at most ~140 characters: MAX_TOKENS
# always lets the grammar finish, whatever the model (one token is at least one character).
MAX_TOKENS = 160
INSTRUCTION = "Please extract the information of a place from the following wikipedia page.\n"


@function
def json_decode(s, document):
    s += INSTRUCTION
    s += "Page begin.\n" + document + "\nPage end.\n"
    s += "Here is the record of the place in JSON format.\n"
    s += gen("record", max_tokens=MAX_TOKENS, json_schema=SCHEMA, temperature=0)


def make_document(g: TextGen) -> str:
    name, kind, country = g.name(), g.choice(KINDS), g.name() + "ia"
    facts = (
        f"{name} is a {kind} in {country}, founded in {g.randint(800, 2024)}. "
        f"It has a population of {g.randint(200, 900000)} and lies near the {g.choice(['coast', 'hills'])}. "
    )
    return facts + g.paragraph(g.randint(200, 320))


def build(num_programs: int, seed: int) -> Batch:
    g = TextGen(seed)
    return Batch(json_decode, [{"document": make_document(g)} for _ in range(num_programs)])


def check(state: ProgramState, inputs: dict) -> list[str]:
    text = state["record"]
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
    except (ValueError, jsonschema.ValidationError) as e:
        return [f"record {text!r:.80} is not valid under the schema: {str(e).splitlines()[0]}"]
    return []


WORKLOAD = Workload(
    "json_decode", "a record under a JSON schema (enum, patterns, bounded ints, nested object)", build, check, 12, 100
)
