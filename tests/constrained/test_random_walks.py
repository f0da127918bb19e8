"""Random walks through the masks: whatever allowed tokens are sampled, the text parses and
validates against the schema (or fullmatches the regex). Every other walk also jumps forward."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest

from tests.constrained.helpers import random_walk

WALKS = 30

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "role": {"enum": ["admin", "user", "guest"]},
        "active": {"type": "boolean"},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 6},
                "zip": {"type": "string", "pattern": "[0-9]{5}"},
            },
            "required": ["city"],
        },
        "nickname": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}]},
    },
    "required": ["name", "age", "role"],
}
ORDERS = {
    "type": "array",
    "minItems": 1,
    "maxItems": 3,
    "items": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "exclusiveMinimum": 0},
            "qty": {"type": "integer", "minimum": 1, "maximum": 12},
            "price": {"type": "number"},
            "tags": {"type": "array", "items": {"enum": ["new", "sale"]}, "maxItems": 2},
        },
        "required": ["id", "qty"],
    },
}
EVENTS = {
    "$defs": {"when": {"type": "string", "format": "date"}},
    "type": "object",
    "properties": {
        "event": {
            "oneOf": [
                {"type": "object", "properties": {"kind": {"const": "meet"}, "on": {"$ref": "#/$defs/when"}},
                 "required": ["kind", "on"]},
                {"type": "object", "properties": {"kind": {"const": "call"}, "minutes": {"type": "integer", "maximum": 90}},
                 "required": ["kind"]},
            ]
        },
        "point": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}]},
        "id": {"type": "string", "format": "uuid"},
        "done": {"type": ["boolean", "null"]},
    },
    "required": ["event", "point"],
}  # fmt: skip
OPTIONALS = {
    "type": "object",
    "properties": {f"p{i}": {"type": "integer", "minimum": 0, "maximum": 9} for i in range(8)},
}


@pytest.mark.parametrize("schema", [PERSON, ORDERS, EVENTS, OPTIONALS], ids=["person", "orders", "events", "optionals"])
def test_walks_produce_json_valid_for_the_schema(compiler, tokenizer, schema):
    grammar = compiler.submit("json_schema", json.dumps(schema)).result()
    rng = random.Random(1234)
    for walk in range(WALKS):
        output = random_walk(grammar.new_matcher(), rng, tokenizer=tokenizer if walk % 2 else None)
        text = grammar.table.decode(output).decode()
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize(
    "kind, source, check",
    [
        ("regex", r"[a-z]{1,6}@[a-z]{2,4}\.(com|org)", r"[a-z]{1,6}@[a-z]{2,4}\.(com|org)"),
        ("regex", r"(ab|abc)+-[0-9]{2}", r"(ab|abc)+-[0-9]{2}"),
        ("dtype", "int", r"(0|-?[1-9][0-9]*)"),
        ("dtype", "float", r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"),
    ],
)
def test_walks_fullmatch_the_regex(compiler, tokenizer, kind, source, check):
    grammar = compiler.submit(kind, source).result()
    rng = random.Random(7)
    for walk in range(WALKS):
        text = grammar.table.decode(random_walk(grammar.new_matcher(), rng, tokenizer=tokenizer if walk % 2 else None))
        assert re.fullmatch(check, text.decode()), text


def test_walks_give_one_of_the_choices(compiler, tokenizer):
    choices = ["yes", "yesterday", "no", "maybe later", "日本"]
    grammar = compiler.submit("choices", json.dumps(choices)).result()
    rng = random.Random(3)
    seen = set()
    for walk in range(WALKS):
        text = grammar.table.decode(random_walk(grammar.new_matcher(), rng, tokenizer=tokenizer if walk % 2 else None))
        assert text.decode() in choices
        seen.add(text.decode())
    assert len(seen) >= 4 and "yesterday" in seen
