"""Jump-forward: the forced strings of compact JSON, choices and regexes, and retokenization that
keeps the decoded output and the matcher consistent."""

from __future__ import annotations

import json

from radixrt.constrained import jump_forward_tokens
from tests.constrained.helpers import encode

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "ok": {"type": "boolean"}},
    "required": ["name", "age", "ok"],
}


def test_compact_json_forces_the_structure_between_values(compiler, tokenizer):
    matcher = compiler.submit("json_schema", json.dumps(SCHEMA)).result().new_matcher()
    assert matcher.jump_forward() == '{"name":"'
    assert matcher.accept_tokens(encode(tokenizer, '{"name":"Al'))
    assert matcher.jump_forward() is None  # inside a free string nothing is forced
    assert matcher.accept_tokens(encode(tokenizer, '"'))
    assert matcher.jump_forward() == ',"age":'
    assert matcher.accept_tokens(encode(tokenizer, ',"age":7,"ok":'))
    assert matcher.jump_forward() is None  # true or false
    assert matcher.accept_tokens(encode(tokenizer, "t"))
    assert matcher.jump_forward() == "rue}"


def test_choices_and_regexes_force_their_common_prefix(compiler):
    forced = compiler.submit("choices", json.dumps(["hello world", "hello there"])).result().new_matcher()
    assert forced.jump_forward() == "hello "
    assert compiler.submit("regex", "abc[0-9]+").result().new_matcher().jump_forward() == "abc"
    assert compiler.submit("choices", json.dumps(["日本語"])).result().new_matcher().jump_forward() == "日本語"
    assert compiler.submit("regex", "[a-z]+").result().new_matcher().jump_forward() is None


def test_jump_forward_tokens_at_the_start_tokenizes_the_forced_text(compiler, tokenizer):
    grammar = compiler.submit("json_schema", json.dumps(SCHEMA)).result()
    matcher = grammar.new_matcher()
    k, new_ids = jump_forward_tokens(matcher, tokenizer, [])
    assert k == 0 and new_ids == encode(tokenizer, '{"name":"')
    assert matcher.jump_forward() is None and matcher.accept_tokens(encode(tokenizer, 'x"'))


def test_jump_forward_tokens_retokenizes_the_boundary_and_keeps_text_consistent(compiler, tokenizer):
    grammar = compiler.submit("json_schema", json.dumps(SCHEMA)).result()
    matcher = grammar.new_matcher()
    output = encode(tokenizer, '{"name":"Al"')
    assert matcher.accept_tokens(output)
    before = grammar.table.decode(output)
    k, new_ids = jump_forward_tokens(matcher, tokenizer, output)
    assert k >= 1, "the closing quote merges with the forced comma"
    output = output[: len(output) - k] + new_ids
    assert grammar.table.decode(output) == before + b',"age":'
    # The matcher holds exactly the new output: the same continuation is accepted by a fresh matcher.
    fresh = grammar.new_matcher()
    assert fresh.accept_tokens(output) and fresh.state == matcher.state
    assert matcher.accept_tokens(encode(tokenizer, '3,"ok":false}')) and matcher.is_terminated()


def test_jump_forward_tokens_is_none_when_nothing_is_forced(compiler, tokenizer):
    matcher = compiler.submit("regex", "[a-z]+").result().new_matcher()
    output = encode(tokenizer, "abc")
    matcher.accept_tokens(output)
    state = matcher.state
    assert jump_forward_tokens(matcher, tokenizer, output) is None and matcher.state == state
