"""GrammarCompiler: background compiles, memory and disk caches with counters, clear errors, and
pathological grammars stopped by the time, size and memory budgets."""

from __future__ import annotations

import json

import pytest

from radixrt.constrained import GrammarCompiler
from radixrt.errors import InvalidRequest
from tests.constrained.helpers import EOS_IDS, MODEL_VOCAB, encode

SCHEMA = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def failure(future) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        future.result()
    return info.value


@pytest.fixture(scope="module")
def strict(model_dir):
    """A compiler with small budgets, for grammars that must fail fast."""
    with GrammarCompiler(
        model_dir, eos_token_ids=EOS_IDS, vocab_size=MODEL_VOCAB, time_limit_s=1.0, max_states=200,
        max_compile_memory_bytes=1 << 30,
    ) as compiler:  # fmt: skip
        yield compiler


def test_second_submit_of_the_same_grammar_is_a_counted_hit(compiler):
    before = compiler.stats()
    first = compiler.submit("regex", "(cat|dog)s?").result()
    second = compiler.submit("regex", "(cat|dog)s?").result()
    after = compiler.stats()
    assert second is first
    assert after["misses"] - before["misses"] == 1 and after["hits"] - before["hits"] == 1
    assert after["compiles"] - before["compiles"] == 1 and after["compile_seconds"] > before["compile_seconds"]


def test_disk_cache_survives_a_new_compiler(model_dir, tmp_path, tokenizer):
    with GrammarCompiler(model_dir, eos_token_ids=EOS_IDS, vocab_size=MODEL_VOCAB, cache_dir=tmp_path) as first:
        compiled = first.submit("json_schema", SCHEMA).result()
    with GrammarCompiler(model_dir, eos_token_ids=EOS_IDS, vocab_size=MODEL_VOCAB, cache_dir=tmp_path) as second:
        loaded = second.submit("json_schema", SCHEMA).result()
        assert second.stats()["disk_hits"] == 1 and second.stats()["compiles"] == 0
    assert loaded.num_states == compiled.num_states and loaded.regex == compiled.regex
    matcher = loaded.new_matcher()
    assert matcher.accept_tokens(encode(tokenizer, '{"city":"Oslo"}')) and matcher.is_final()


def test_bad_regexes_fail_through_the_future_naming_the_field(compiler):
    error = failure(compiler.submit("regex", "a(?<=b)c"))
    assert error.param == "regex" and "look-around" in str(error)
    error = failure(compiler.submit("regex", "a{3,2}"))
    assert error.param == "regex" and "invalid regex" in str(error)


def test_failures_are_cached_and_counted(compiler):
    before = compiler.stats()
    first, second = failure(compiler.submit("regex", "x{9,1}")), failure(compiler.submit("regex", "x{9,1}"))
    after = compiler.stats()
    assert str(first) == str(second)
    assert after["failures"] - before["failures"] == 1 and after["hits"] - before["hits"] == 1


def test_unsupported_schema_fails_listing_the_keywords(compiler):
    schema = {"type": "array", "items": {"type": "integer", "multipleOf": 2}, "uniqueItems": True}
    error = failure(compiler.submit("json_schema", json.dumps(schema)))
    assert error.param == "json_schema" and "multipleOf" in str(error) and "uniqueItems" in str(error)


def test_submit_returns_before_a_slow_compile_finishes(strict):
    future = strict.submit("regex", "(a|b)*a(a|b){24}")
    assert not future.done()
    assert "longer than 1s" in str(failure(future))


@pytest.mark.parametrize(
    "kind, source",
    [
        ("json_schema", json.dumps({"enum": [f"value-{i}-{i * 7919 % 10007}" for i in range(5000)]})),
        ("json_schema", json.dumps({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(200)}})),
        ("json_schema", json.dumps(eval("{'type':'array','items':" * 40 + "{'type':'integer'}" + "}" * 40))),
        ("regex", "[a-z]{300}"),
    ],
    ids=["huge-enum", "many-optional-properties", "deep-nesting", "too-many-states"],
)  # fmt: skip
def test_pathological_grammars_fail_within_the_budget(strict, kind, source):
    error = failure(strict.submit(kind, source))
    assert error.param == kind
    assert any(reason in str(error) for reason in ("longer than 1s", "more than the limit", "memory")), str(error)


def test_the_compiler_recovers_after_a_killed_compile(strict, tokenizer):
    failure(strict.submit("regex", "(x|y)*x(x|y){24}"))
    matcher = strict.submit("regex", "[0-9]{3}").result().new_matcher()
    assert matcher.accept_tokens(encode(tokenizer, "123")) and matcher.is_final()


def test_validate_reports_enforced_and_unsupported_keywords(compiler):
    report = compiler.validate("json_schema", SCHEMA)
    assert report["ok"] and report["error"] is None and report["num_states"] > 0
    assert {"properties", "required", "type"} <= set(report["enforced"]) and report["unsupported"] == []
    bad = compiler.validate("json_schema", json.dumps({"type": "string", "format": "ipv4"}))
    assert not bad["ok"] and "format" in bad["error"] and bad["unsupported"][0].startswith("format")


def test_parallel_workers_compile_independent_grammars(model_dir, tokenizer):
    with GrammarCompiler(model_dir, eos_token_ids=EOS_IDS, vocab_size=MODEL_VOCAB, num_workers=2) as compiler:
        futures = [compiler.submit("regex", f"item{i}[a-z]") for i in range(4)]
        grammars = [f.result() for f in futures]
    for i, grammar in enumerate(grammars):
        assert grammar.new_matcher().accept_tokens(encode(tokenizer, f"item{i}q"))
