"""Constrained decoding through the real scheduler (in-process Engine, embedded model)."""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest

import radixrt
from radixrt.errors import InvalidRequest

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
    },
    "required": ["name", "age", "role"],
}


@pytest.fixture(scope="module")
def engine():
    eng = radixrt.Engine(model="default", kv_slots=4096)
    yield eng
    eng.shutdown()


def prompt(engine, text: str) -> str:
    return engine.tm.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def test_json_schema_outputs_validate_when_sampling(engine):
    p = prompt(engine, "Describe a person as JSON.")
    params = {"json_schema": json.dumps(PERSON), "temperature": 1.0, "max_new_tokens": 96, "n": 6, "seed": 1}
    for out in engine.generate(p, params):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        jsonschema.validate(json.loads(out["text"]), PERSON)


def test_regex_and_choices_and_dtype(engine):
    p = prompt(engine, "Give me a phone number.")
    # NOTE: [0-9], not \d: outlines-core's \d also admits non-ASCII digits (many tokens each)
    out = engine.generate(p, {"regex": r"[0-9]{3}-[0-9]{4}", "temperature": 0.7, "seed": 3, "max_new_tokens": 16})
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", out["text"])
    out = engine.generate(p, {"choices": ["yes", "no", "maybe"], "temperature": 0})
    assert out["text"] in ("yes", "no", "maybe")
    out = engine.generate(
        prompt(engine, "How many legs does a cat have?"), {"dtype": "int", "temperature": 0, "max_new_tokens": 8}
    )
    int(out["text"])


def test_jump_forward_runs_fewer_decode_steps_and_both_validate(engine):
    p = prompt(engine, "Describe a person as JSON.")
    params = {"json_schema": json.dumps(PERSON), "temperature": 0, "max_new_tokens": 96}
    before = engine.stats()
    jumped = engine.generate(p, params)
    after = engine.stats()
    jsonschema.validate(json.loads(jumped["text"]), PERSON)
    assert jumped["meta_info"]["jump_forward_tokens"] > 0
    steps_with = after["steps"] - before["steps"]
    off = radixrt.Engine(model="default", kv_slots=4096, disable_jump_forward=True)
    try:
        plain = off.generate(p, params)
        jsonschema.validate(json.loads(plain["text"]), PERSON)
        assert off.stats()["steps"] > steps_with
    finally:
        off.shutdown()


def test_bad_grammar_fails_alone_while_a_concurrent_request_completes(engine):
    results = {}

    def run_ok():
        results["ok"] = engine.generate("Once upon a time", {"max_new_tokens": 16, "temperature": 0})

    t = threading.Thread(target=run_ok)
    t.start()
    with pytest.raises(InvalidRequest, match="regex"):
        engine.generate("x", {"regex": r"(?<=a)b"})
    with pytest.raises(InvalidRequest, match="cannot enforce"):
        engine.generate(
            "x",
            {"json_schema": json.dumps({"type": "string", "format": "no-such-format", "contentEncoding": "base64"})},
        )
    t.join(timeout=120)
    assert results["ok"]["meta_info"]["completion_tokens"] == 16
    s = engine.stats()
    assert s["kv_slots_in_use"] == 0 and s["kv_slots_free"] + s["kv_slots_cached"] == s["kv_slots_total"]


def test_same_grammar_is_served_from_the_cache(engine):
    params = {"regex": r"(red|green|blue) [0-9]{2}", "max_new_tokens": 8, "temperature": 0}
    engine.generate("Color:", params)
    hits = engine.stats()["grammar"]["hits"]
    engine.generate("Another color:", params)
    assert engine.stats()["grammar"]["hits"] == hits + 1


def test_structured_output_cut_by_max_tokens_reports_length(engine):
    out = engine.generate(
        prompt(engine, "Describe a person as JSON."),
        {"json_schema": json.dumps(PERSON), "max_new_tokens": 3, "temperature": 0},
    )
    assert out["meta_info"]["finish_reason"]["type"] == "length"
