"""SGLang /generate bodies -> GenerateRequests, and the streamed whole-text events."""

from __future__ import annotations

import pytest

from radixrt.errors import InvalidRequest
from radixrt.runtime.http.common import error_json
from radixrt.runtime.http.generate import StreamText, parse_generate
from radixrt.runtime.protocol import GenerateChunk, GenerateResult


def test_single_text_gives_one_request_with_defaults_for_nulls():
    call = parse_generate(
        {"text": "hi", "sampling_params": {"temperature": 0, "top_p": None, "stop": "\n"}, "rid": None, "stream": None}
    )
    (req,) = call.requests
    assert not call.is_batch and not call.stream
    assert req.text == "hi" and req.sampling.temperature == 0.0 and req.sampling.top_p == 1.0
    assert req.sampling.stop == ["\n"] and req.rid


def test_list_inputs_give_one_request_per_prompt_with_per_prompt_fields():
    call = parse_generate(
        {
            "input_ids": [[1, 2], [3]],
            "sampling_params": [{"max_new_tokens": 1}, {"max_new_tokens": 2}],
            "rid": ["a", "b"],
            "return_logprob": True,
            "stream": True,
        }
    )
    assert call.is_batch and call.stream
    assert [(r.rid, r.input_ids, r.sampling.max_new_tokens, r.return_logprob) for r in call.requests] == [
        ("a", [1, 2], 1, True),
        ("b", [3], 2, True),
    ]


def test_unknown_fields_are_ignored_and_a_json_schema_object_becomes_text():
    call = parse_generate(
        {
            "text": "x",
            "foo": 1,
            "sampling_params": {"spaces_between_special_tokens": True, "json_schema": {"type": "integer"}},
        }
    )
    assert call.requests[0].sampling.json_schema == '{"type":"integer"}'


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([1, 2], None),
        ({}, "text"),
        ({"text": []}, "text"),
        ({"text": ["a", 1]}, "text"),
        ({"input_ids": ["a"]}, "input_ids"),
        ({"text": ["a", "b"], "rid": ["only one"]}, "rid"),
        ({"text": "a", "sampling_params": {"max_new_tokens": "many"}}, "max_new_tokens"),
        ({"text": "a", "sampling_params": {"stop": [3]}}, "stop"),
        ({"text": "a", "sampling_params": {"stop_regex": "x"}}, "stop_regex"),
        ({"text": "a", "sampling_params": [{}]}, "sampling_params"),
        ({"text": "a", "image_data": "img.png"}, "image_data"),
        ({"text": "a", "return_logprob": "yes"}, "return_logprob"),
    ],
)
def test_bad_bodies_raise_invalid_request_naming_the_field(body, param):
    with pytest.raises(InvalidRequest) as info:
        parse_generate(body)
    assert info.value.param == param


def test_stream_events_carry_the_whole_text_so_far_and_skip_a_repeated_final_result():
    acc = StreamText()
    first = acc.chunk_event(0, GenerateChunk(rid="r", text="Hel", output_ids=[1]), with_index=False)
    second = acc.chunk_event(0, GenerateChunk(rid="r", text="lo", output_ids=[2]), with_index=False)
    assert (first["text"], second["text"], second["output_ids"]) == ("Hel", "Hello", [1, 2])
    assert acc.result_event(0, GenerateResult(rid="r", text="Hello", output_ids=[1, 2]), with_index=False) is None
    final = acc.result_event(1, GenerateResult(rid="r", text="Bye", output_ids=[3]), with_index=True)
    assert final is not None and final["index"] == 1 and final["text"] == "Bye"


def test_error_bodies_have_openai_shape():
    assert error_json(400, "bad", "top_p") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "top_p", "code": 400}
    }
    assert error_json(503, "down")["error"]["type"] == "overloaded_error"
