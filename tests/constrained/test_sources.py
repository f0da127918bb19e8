"""Grammar sources -> regex: JSON-schema keywords are enforced or rejected by name ("faithful or
loud"), integer and number bounds become range regexes, and regex/choices/dtype are checked."""

from __future__ import annotations

import json
import re

import pytest
from outlines_core.json_schema import build_regex_from_schema

from radixrt.constrained import (
    REGEX_BOOL,
    REGEX_FLOAT,
    REGEX_INT,
    REGEX_STR,
    check_json_schema,
    to_regex,
)
from radixrt.constrained.sources import prepare
from radixrt.errors import InvalidRequest


def schema_regex(schema: dict) -> re.Pattern:
    return re.compile(to_regex("json_schema", json.dumps(schema)))


def rejection(kind: str, source) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        prepare(kind, source)
    assert info.value.param == kind
    return info.value


def test_outlines_converter_alone_drops_integer_bounds():
    # The reason radixrt enforces bounds itself: outlines-core's regex ignores them.
    regex = build_regex_from_schema(json.dumps({"type": "integer", "minimum": 5, "maximum": 10}))
    assert re.fullmatch(regex, "3") and re.fullmatch(regex, "11")


def test_integer_minimum_and_maximum_are_enforced():
    pattern = schema_regex({"type": "object", "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 120}},
                            "required": ["n"]})  # fmt: skip
    for value in range(-50, 300):
        assert bool(pattern.fullmatch(f'{{"n":{value}}}')) == (3 <= value <= 120), value


def test_exclusive_and_fractional_integer_bounds_round_inwards():
    pattern = schema_regex({"type": "integer", "exclusiveMinimum": 0, "maximum": 7.5})
    assert [v for v in range(-5, 15) if pattern.fullmatch(str(v))] == list(range(1, 8))


def test_number_bounds_are_enforced():
    pattern = schema_regex({"type": "number", "minimum": 0, "maximum": 1})
    assert all(pattern.fullmatch(s) for s in ("0", "1", "0.5", "0.125", "1.0"))
    assert not any(pattern.fullmatch(s) for s in ("1.5", "-0.1", "2", "1e0", "-1"))


def test_unsupported_keywords_are_all_listed():
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "n": {"type": "integer", "multipleOf": 3},
            "x": {"not": {"type": "string"}},
            "both": {"allOf": [{"type": "string"}, {"maxLength": 3}]},
            "when": {"type": "string", "format": "hostname"},
        },
        "patternProperties": {"^a": {"type": "string"}},
    }
    message = str(rejection("json_schema", json.dumps(schema)))
    for keyword in ("uniqueItems", "multipleOf", "not", "allOf", "format", "patternProperties"):
        assert keyword in message, keyword
    assert "/properties/tags" in message
    checked = check_json_schema(schema)
    assert "properties" in checked.enforced and len(checked.unsupported) == 6


@pytest.mark.parametrize(
    "schema, fragment",
    [
        ({"type": "string", "minLength": 2, "pattern": "^a+$"}, "pattern"),
        ({"type": "string", "pattern": ".*"}, "pattern"),
        ({"type": "string", "pattern": '[a-z"]+'}, "pattern"),
        ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, "oneOf"),
        ({"$defs": {"n": {"properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"}, "recursive"),
        ({"$ref": "https://example.com/schema.json"}, "$ref"),
        ({"properties": {"a": {"type": "string"}}, "required": ["b"]}, "'b' is not in properties"),
        ({"properties": {'a"b': {"type": "string"}}}, "escaping"),
        ({"type": "string", "enum": ["a", 1]}, "does not match the type"),
        ({"type": "object", "maxProperties": 3}, "maxProperties"),
        ({"type": "number", "minimum": 0.2, "maximum": 0.8}, "minimum"),
        ({"minimum": 3}, "minimum"),
    ],
)
def test_schemas_that_cannot_be_enforced_are_rejected(schema, fragment):
    assert fragment in str(rejection("json_schema", json.dumps(schema)))


def test_invalid_schemas_are_rejected_with_the_field_name():
    assert "not valid JSON" in str(rejection("json_schema", "{not json"))
    assert "object" in str(rejection("json_schema", "[1, 2]"))
    with pytest.raises(InvalidRequest, match="too large"):
        prepare("json_schema", json.dumps({"type": "array", "items": {"type": "array", "items": {}}}),
                max_schema_nodes=2)  # fmt: skip


def test_refs_are_inlined_and_disjoint_one_of_is_accepted():
    schema = {
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
        "oneOf": [
            {"type": "object", "properties": {"kind": {"const": "p"}, "at": {"$ref": "#/$defs/point"}},
             "required": ["kind", "at"]},
            {"type": "object", "properties": {"kind": {"const": "q"}}, "required": ["kind"]},
        ],
    }  # fmt: skip
    pattern = schema_regex(schema)
    assert pattern.fullmatch('{"kind":"p","at":{"x":-3}}') and pattern.fullmatch('{"kind":"q"}')
    assert not pattern.fullmatch('{"kind":"q","at":{"x":1}}')


def test_pattern_alternation_stays_inside_the_quotes():
    pattern = schema_regex({"type": "string", "pattern": "^cat|dog$"})
    assert pattern.fullmatch('"cat"') and pattern.fullmatch('"dog"')
    assert not pattern.fullmatch('"cat') and not pattern.fullmatch('dog"')


def test_any_value_property_is_grouped():
    # outlines-core writes {} as a bare alternation; inside an object that would match "null" alone.
    pattern = schema_regex(
        {"type": "object", "properties": {"x": {}, "y": {"type": "integer"}}, "required": ["x", "y"]}
    )
    assert pattern.fullmatch('{"x":[1,"a"],"y":2}') and not pattern.fullmatch("null")


@pytest.mark.parametrize(
    "regex, fragment",
    [("a(?=b)", "look-around"), (r"(a)\1", "backreferences"), (r"a\bb", r"\b"), ("a)(b", "parentheses"),
     ("(?x)a#c", "verbose"), ("a^b", "anchors"), ("[ab", "character class")],
)  # fmt: skip
def test_unsupported_regexes_are_rejected(regex, fragment):
    assert fragment in str(rejection("regex", regex))


def test_regex_outer_anchors_are_dropped():
    assert to_regex("regex", "^[a-z]+$") == "[a-z]+"


def test_choices_are_escaped_literals():
    choices = ["a.b", "c d", "x|y", "(1+1)", "é"]
    pattern = re.compile(to_regex("choices", json.dumps(choices)))
    assert all(pattern.fullmatch(c) for c in choices)
    assert not any(pattern.fullmatch(s) for s in ("aXb", "x", "y", "11"))
    assert "non-empty" in str(rejection("choices", "[]"))


def test_dtype_regexes():
    assert to_regex("dtype", "int") == REGEX_INT and to_regex("dtype", "str") == REGEX_STR
    assert all(re.fullmatch(REGEX_INT, s) for s in ("0", "-12", "7"))
    assert not any(re.fullmatch(REGEX_INT, s) for s in ("01", "-0", "1.0"))
    assert all(re.fullmatch(REGEX_FLOAT, s) for s in ("0", "-1.5", "2e10", "3.25E-2"))
    assert re.fullmatch(REGEX_BOOL, "True") and not re.fullmatch(REGEX_BOOL, "true")
    assert json.loads(re.fullmatch(REGEX_STR, r'"a\"b"').group()) == 'a"b'
    assert "dtype" in str(rejection("dtype", "complex"))
