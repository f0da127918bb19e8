"""Tool prompts, call grammars and call parsing (no server)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from radixrt.constrained import to_regex
from radixrt.runtime.openai import tool_calls
from radixrt.runtime.openai.protocol import parse_chat

PARAMS = {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"]}
TOOLS = [
    {"type": "function", "function": {"name": "weather", "description": "Weather now", "parameters": PARAMS}},
    {"type": "function", "function": {"name": "time"}},
]
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]


def chat(**extra):
    return parse_chat({"messages": CONVERSATION, "tools": TOOLS, **extra})


def test_a_template_without_tools_gets_them_in_the_system_message_and_calls_as_text():
    req = chat()
    system, user, assistant, tool = tool_calls.template_messages(req.messages, req.tools, native=False)
    assert system["role"] == "system" and system["content"].startswith("Be brief.\n\n")
    assert '"name": "weather"' in system["content"] and '"name": "time"' in system["content"]
    assert user == {"role": "user", "content": "Weather in Oslo?"}
    assert assistant["content"] == '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert tool == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}


def test_a_tool_aware_template_gets_the_calls_as_data():
    req = chat()
    messages = tool_calls.template_messages(req.messages, req.tools, native=True)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[2]["tool_calls"][0]["function"] == {"name": "weather", "arguments": {"city": "Oslo"}}
    assert messages[3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert tool_calls.template_knows_tools("{% if tools %}...{% endif %}")
    assert not tool_calls.template_knows_tools("{{ messages }}") and not tool_calls.template_knows_tools(None)


def test_call_schemas_allow_exactly_the_chosen_tools():
    req = chat(tool_choice={"type": "function", "function": {"name": "weather"}})
    named = tool_calls.call_schema(req.tools, req.tool_choice)
    jsonschema.validate({"name": "weather", "arguments": {"city": "Paris"}}, named)
    for wrong in ({"name": "time", "arguments": {}}, {"name": "weather", "arguments": {"city": "Rome"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, named)
    either = tool_calls.call_schema(chat().tools, "required")
    jsonschema.validate({"name": "time", "arguments": {"any": 1}}, either)
    regex = to_regex("json_schema", json.dumps(named))
    assert re.fullmatch(regex, '{"name":"weather","arguments":{"city":"Paris"}}')
    assert not re.fullmatch(regex, '{"name":"time","arguments":{}}')


def test_the_auto_grammar_allows_the_call_marker_or_text_that_does_not_start_with_it():
    regex = to_regex("regex", tool_calls.AUTO_REGEX)
    for text in ("<tool_call>", "", "Sunny in Oslo.", "It is 20 <b>degrees</b>\nok"):
        assert re.fullmatch(regex, text), text
    for text in ("<tool_call>{", "<b>hi", "<tool"):
        assert not re.fullmatch(regex, text), text


def test_generated_calls_parse_into_name_and_json_arguments():
    assert tool_calls.parse_call('{"name":"weather","arguments":{"city":"Oslo"}}') == ("weather", '{"city": "Oslo"}')
    assert tool_calls.parse_call('{"name":"weather","arguments":{"ci') is None
    assert tool_calls.parse_call('["weather"]') is None
    assert re.fullmatch(r"call_[0-9a-f]{24}", tool_calls.new_call_id())
