"""Choices of OpenAI requests over scripted Frontend streams (no worker, no model)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from radixrt.runtime.openai import tool_calls
from radixrt.runtime.openai.choices import (
    Final,
    Piece,
    Spec,
    Submitter,
    auto_choice,
    merge,
    plain_choice,
    tool_choice,
)
from radixrt.runtime.protocol import (
    ErrorReply,
    GenerateChunk,
    GenerateResult,
    SamplingParams,
)
from radixrt.runtime.server.request_stream import END, Stream

SCHEMA = {"type": "object", "properties": {"name": {"const": "f"}, "arguments": {"type": "object"}}}


class CharTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


class ScriptedFrontend:
    """`generate` answers each request with the next script; `open` stays unanswered (endless)."""

    def __init__(self, *scripts: list[Any] | str):
        self.scripts = list(scripts)
        self.requests: list[Any] = []
        self.closed: list[str] = []
        self.tm = SimpleNamespace(tokenizer=CharTokenizer())

    def generate(self, req: Any, namespace: str) -> Stream:
        self.requests.append(req)
        handler = SimpleNamespace(worker_rids=[req.rid])
        stream = Stream(lambda s: self.closed.append(s.client_rid), handler, req.rid, req.rid)
        script = self.scripts.pop(0)
        if script != "open":
            for msg in script:
                stream.put(msg)
            stream.put(END)
        return stream


def result(text: str, finish: str = "stop", completion_tokens: int = 3) -> GenerateResult:
    meta = {"finish_reason": {"type": finish}, "prompt_tokens": 5, "cached_tokens": 2}
    meta["completion_tokens"] = completion_tokens
    return GenerateResult(rid="r", text=text, output_ids=[], meta_info=meta)


def chunk(text: str) -> GenerateChunk:
    return GenerateChunk(rid="r", text=text, output_ids=[], meta_info={})


def spec() -> Spec:
    return Spec([1, 2], SamplingParams(max_new_tokens=9, stop=["}"]), prompt_text="PROMPT")


def run(choice: Any) -> list[Any]:
    async def collect() -> list[Any]:
        return [e async for e in choice]

    return asyncio.run(collect())


def test_a_text_answer_in_auto_mode_streams_and_needs_one_request():
    frontend = ScriptedFrontend([chunk("Sun"), chunk("ny"), result("Sunny")])
    events = run(auto_choice(0, spec(), Submitter(frontend, stream=True), SCHEMA))
    assert "".join(e.text for e in events if isinstance(e, Piece)) == "Sunny"
    assert events[-1].text == "Sunny" and events[-1].tool_call is None and events[-1].finish_reason == "stop"
    (decide,) = frontend.requests
    assert decide.sampling.regex == tool_calls.AUTO_REGEX and decide.stream


def test_the_call_marker_in_auto_mode_leads_to_a_call_generated_under_the_schema():
    call = '{"name":"f","arguments":{"x":1}}'
    marker = [chunk("<"), chunk("tool_call>"), result("<tool_call>", completion_tokens=4)]
    frontend = ScriptedFrontend(marker, [result(call, completion_tokens=10)])
    events = run(auto_choice(0, spec(), Submitter(frontend, stream=True), SCHEMA))
    (final,) = events  # the marker is never shown as content
    assert final.finish_reason == "tool_calls" and final.tool_call[1:] == ("f", '{"x": 1}')
    assert final.tool_call[0].startswith("call_") and final.completion_tokens == 14
    decide, generate = frontend.requests
    assert generate.input_ids == CharTokenizer().encode("PROMPT<tool_call>\n")
    assert json.loads(generate.sampling.json_schema) == SCHEMA and generate.sampling.regex is None
    assert decide.sampling.stop == ["}"] and generate.sampling.stop == []  # a stop string would cut the call


def test_a_call_cut_by_max_tokens_reports_length_without_a_tool_call():
    frontend = ScriptedFrontend([result('{"name":"f","argu', finish="length")])
    (final,) = run(tool_choice(0, spec(), Submitter(frontend, stream=False), SCHEMA))
    assert final.finish_reason == "length" and final.tool_call is None and final.text == '{"name":"f","argu'


def test_a_worker_error_ends_the_merged_choices_and_closes_every_stream():
    frontend = ScriptedFrontend([ErrorReply(rid="r", status=400, message="bad grammar", param="json_schema")], "open")
    sub = Submitter(frontend, stream=False)

    async def consume() -> None:
        async for _ in merge([plain_choice(0, spec(), sub), plain_choice(1, spec(), sub)]):
            pass

    try:
        asyncio.run(consume())
    except Exception as e:  # noqa: BLE001 - checked below
        assert (getattr(e, "status", None), str(e), e.param) == (400, "bad grammar", "json_schema")
    else:
        raise AssertionError("the error was not raised")
    assert frontend.requests[1].rid in frontend.closed  # the unanswered request was aborted


def test_merge_interleaves_choices_and_keeps_their_indices():
    frontend = ScriptedFrontend([chunk("a"), result("a")], [chunk("b"), result("b")])
    sub = Submitter(frontend, stream=True)
    events = run(merge([plain_choice(0, spec(), sub), plain_choice(1, spec(), sub)]))
    finals = {e.index: e.text for e in events if isinstance(e, Final)}
    assert finals == {0: "a", 1: "b"} and len(events) == 4
