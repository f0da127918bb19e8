"""GrammarMatcher on the embedded model's vocabulary: the model's own tokenization of valid JSON is
accepted, invalid continuations are refused without changing state, EOS only where the grammar is
complete, bitmask rows match the matcher, rollback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.constrained.helpers import EOS_IDS, MODEL_VOCAB, allowed_ids, encode

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def grammar(compiler):
    return compiler.submit("json_schema", json.dumps(SCHEMA)).result()


def test_accepts_the_models_tokenization_of_valid_json(grammar, tokenizer):
    matcher = grammar.new_matcher()
    document = json.dumps({"name": "Ada Lovelace", "age": 36, "tags": ["math", "poetry"]}, separators=(",", ":"))
    assert matcher.accept_tokens(encode(tokenizer, document))
    assert matcher.is_final() and matcher.is_terminated()
    assert matcher.accept_token(EOS_IDS[1])
    assert not matcher.accept_token(encode(tokenizer, "x")[0])


def test_rejects_invalid_continuations_and_keeps_its_state(grammar, tokenizer):
    matcher = grammar.new_matcher()
    assert matcher.accept_tokens(encode(tokenizer, '{"name":"Bo","age":'))
    state = matcher.state
    for bad in ['"', "-", "x", "}", "200", " 1"]:
        assert not matcher.accept_tokens(encode(tokenizer, bad)), bad
        assert matcher.state == state
    assert not matcher.accept_token(EOS_IDS[0])  # EOS before the object is complete
    assert matcher.accept_tokens(encode(tokenizer, "42}"))
    assert not matcher.accept_tokens(encode(tokenizer, ","))


def test_bitmask_row_agrees_with_the_matcher(grammar, tokenizer):
    matcher = grammar.new_matcher()
    matcher.accept_tokens(encode(tokenizer, '{"name":"Bo","age":1'))
    allowed = set(allowed_ids(matcher).tolist())
    digits = {encode(tokenizer, d)[0] for d in "0123456789"}
    assert digits <= allowed and not set(EOS_IDS) & allowed
    assert all(t < 49152 for t in allowed)
    for token in list(allowed)[:50]:
        assert matcher.accept_token(token)
        matcher.rollback(1)
    refused = np.setdiff1d(np.arange(2000), list(allowed))[:200]
    assert not any(matcher.accept_token(int(t)) for t in refused)


def test_eos_bits_only_when_complete_and_ids_past_the_tokenizer_stay_masked(compiler, tokenizer):
    matcher = compiler.submit("regex", ".*").result().new_matcher(stop_token_ids=[13])
    allowed = set(allowed_ids(matcher).tolist())
    assert set(EOS_IDS) | {13} <= allowed and not any(t >= 49152 for t in allowed)
    unfinished = compiler.submit("regex", "[a-z]+").result().new_matcher(stop_token_ids=[13])
    assert not (set(EOS_IDS) | {13}) & set(allowed_ids(unfinished).tolist())
    assert not unfinished.accept_token(13)
    assert unfinished.accept_tokens(encode(tokenizer, "abc")) and unfinished.accept_token(13)
    assert unfinished.is_terminated() and set(allowed_ids(unfinished).tolist()) == set(EOS_IDS) | {13}


def test_a_longer_alternative_stays_reachable_after_a_shorter_one_is_complete(compiler, tokenizer):
    # outlines-core alone would end "yes|yesterday" after "yes"; the end sentinel keeps both.
    matcher = compiler.submit("choices", json.dumps(["yes", "yesterday"])).result().new_matcher()
    assert matcher.accept_tokens(encode(tokenizer, "yes"))
    assert matcher.is_final() and not matcher.is_terminated()
    assert matcher.accept_tokens(encode(tokenizer, "terday")) and matcher.is_terminated()


def test_float_fraction_is_reachable_one_token_at_a_time(compiler, tokenizer):
    matcher = compiler.submit("dtype", "float").result().new_matcher()
    for piece in ["1", "2", ".", "5"]:
        assert matcher.accept_tokens(encode(tokenizer, piece)), piece
    assert matcher.is_final()


def test_rollback_restores_earlier_states_including_termination(compiler, tokenizer):
    matcher = compiler.submit("choices", json.dumps(["red", "green", "greener"])).result().new_matcher(max_rollback=8)
    start = matcher.state
    ids = encode(tokenizer, "green")
    assert matcher.accept_tokens(ids) and matcher.accept_token(EOS_IDS[0])
    assert matcher.is_terminated() and not matcher.accept_token(ids[0])
    matcher.rollback(1)
    assert not matcher.is_terminated() and matcher.is_final()
    matcher.rollback(len(ids))
    assert matcher.state == start and not matcher.is_final()
    with pytest.raises(ValueError):
        matcher.rollback(1)


def test_vocab_size_covers_the_padded_model_vocabulary(grammar):
    assert grammar.table.vocab_size == MODEL_VOCAB
