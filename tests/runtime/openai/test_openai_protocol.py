"""Parsing and validating OpenAI request bodies (no server)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixrt.errors import InvalidRequest
from radixrt.runtime import protocol
from radixrt.runtime.openai.protocol import (
    chat_grammar,
    parse_chat,
    parse_completion,
    prompts,
    sampling_params,
)

USER = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
NAMED_F = {"type": "function", "function": {"name": "f"}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def rejected(parse, body) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(body)
    return info.value


def test_a_missing_or_mistyped_field_names_the_field():
    assert rejected(parse_chat, {"model": "m"}).param == "messages"
    wrong = rejected(parse_chat, {"messages": [{"role": "user", "content": 3}]})
    assert wrong.param == "messages[0].content" and "Expected" in str(wrong)
    assert rejected(parse_chat, {"messages": [USER], "temperature": "hot"}).param == "temperature"
    assert rejected(parse_chat, []).param is None
    assert rejected(parse_chat, {"messages": [USER], "seed": 2**70}).param == "seed"  # msgpack carries 64 bits


def test_role_order_is_checked():
    assert rejected(parse_chat, {"messages": []}).param == "messages"
    late_system = [USER, {"role": "system", "content": "s"}]
    assert rejected(parse_chat, {"messages": late_system}).param == "messages[1].role"
    orphan_tool = [USER, {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
    assert "must follow an assistant" in str(rejected(parse_chat, {"messages": orphan_tool}))
    wrong_id = [USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "x", "content": ""}]
    assert rejected(parse_chat, {"messages": wrong_id}).param == "messages[2].tool_call_id"
    assert rejected(parse_chat, {"messages": [{"role": "wizard", "content": "x"}]}).param == "messages[0].role"
    assert rejected(parse_chat, {"messages": [USER, {"role": "assistant"}]}).param == "messages[1].content"


def test_a_valid_tool_conversation_parses_with_text_parts():
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be"}, {"type": "text", "text": "brief"}]},
        USER,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    req = parse_chat({"messages": messages, "tools": [TOOL], "tool_choice": NAMED_F})
    assert req.messages[0].text() == "be\nbrief" and req.tool_choice.function.name == "f"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert rejected(parse_chat, {"messages": image}).param == "messages[0].content"


def test_tool_choice_and_response_format_are_checked():
    def param(**body) -> str | None:
        return rejected(parse_chat, {"messages": [USER], **body}).param

    assert param(tool_choice="required") == "tool_choice"
    assert param(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "g"}}) == "tool_choice"
    assert param(tools=[TOOL], tool_choice="sometimes") == "tool_choice"
    assert param(tools=[TOOL, TOOL]) == "tools"
    fmt = {"type": "json_object"}
    assert param(tools=[TOOL], response_format=fmt) == "response_format"
    assert parse_chat({"messages": [USER], "tools": [TOOL], "tool_choice": "none", "response_format": fmt})
    assert param(response_format={"type": "json_schema"}) == "response_format"
    assert param(response_format={"type": "xml"}) == "response_format"


def test_response_formats_become_json_schema_grammars():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert json.loads(chat_grammar(parse_chat({"messages": [USER], "response_format": fmt}))["json_schema"]) == schema
    assert chat_grammar(parse_chat({"messages": [USER], "response_format": {"type": "json_object"}})) == {
        "json_schema": '{"type": "object"}'
    }
    assert chat_grammar(parse_chat({"messages": [USER], "response_format": {"type": "text"}})) == {}


def test_sampling_fields_map_to_sampling_params_under_openai_names():
    body = {"messages": [USER], "stop": "\n", "seed": 3, "temperature": 0, "presence_penalty": 0.5, "top_k": 5}
    req = parse_chat(body)
    params = sampling_params(req, 7, limit=100)
    assert (params.stop, params.seed, params.max_new_tokens, params.temperature) == (["\n"], 3, 7, 0.0)
    assert (params.presence_penalty, params.top_k) == (0.5, 5)
    assert sampling_params(req, None, limit=100).max_new_tokens == 100
    too_many = rejected(lambda r: sampling_params(r, 500, limit=100), req)
    assert too_many.param == "max_tokens" and "max_tokens=500" in str(too_many)
    assert rejected(parse_chat, {"messages": [USER], "max_tokens": 0}).param == "max_tokens"
    assert rejected(parse_chat, {"messages": [USER], "top_logprobs": 3}).param == "top_logprobs"
    assert rejected(parse_chat, {"messages": [USER], "n": 0}).param == "n"


def test_completion_prompts_and_unsupported_fields():
    assert prompts(parse_completion({"prompt": "a"})) == ["a"]
    assert prompts(parse_completion({"prompt": ["a", "b"]})) == ["a", "b"]
    assert prompts(parse_completion({"prompt": [1, 2]})) == [[1, 2]]
    assert prompts(parse_completion({"prompt": [[1], [2, 3]]})) == [[1], [2, 3]]
    for bad in (None, [], [1, "a"], [[]], 5, [True]):
        assert rejected(parse_completion, {"prompt": bad}).param == "prompt"
    suffix = rejected(parse_completion, {"prompt": "a", "suffix": "z"})
    assert suffix.param == "suffix" and "not supported" in str(suffix)
    assert rejected(parse_completion, {"prompt": "a", "logprobs": 21}).param == "logprobs"
    assert rejected(parse_completion, {"prompt": "a", "best_of": 3}).param == "best_of"
    assert rejected(parse_chat, {"messages": [USER], "logit_bias": {"1": 5}}).param == "logit_bias"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["messages", "model", "n", "stop", "tools", "tool_choice", "response_format", "logprobs", "top_logprobs",
          "max_tokens", "seed", "stream_options", "prompt", "echo", "temperature"]  # fmt: skip
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool", "system", 3]), "content": JSON})


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSON | st.lists(MESSAGE, max_size=3), max_size=6))
def test_any_json_body_is_parsed_or_rejected_as_invalid_request(body):
    for parse in (parse_chat, parse_completion):
        try:
            params = sampling_params(parse(body), 16, limit=100)
        except InvalidRequest:
            continue
        protocol.encoder().encode(params)  # what passes the checks can be sent to the worker
