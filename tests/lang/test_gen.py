from __future__ import annotations

import json

import pytest

import radixrt.lang as rl
from radixrt.errors import InvalidRequest
from radixrt.lang import ir
from radixrt.runtime import protocol as p


def run_one(backend, expr, prefix: str = "P:", **run_kwargs):
    @rl.function
    def prog(s):
        s += prefix + expr

    return prog.run(backend=backend, **run_kwargs)


def sent(server) -> p.GenerateRequest:
    (req,) = server.of_type(p.GenerateRequest)
    return req


def test_gen_sends_the_program_text_and_stores_the_reply(server, backend):
    state = run_one(backend, rl.gen("answer") + "!")
    assert sent(server).text == "P:"
    assert state["answer"] == "<2>"
    assert state.text() == "P:<2>!"


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"max_tokens": 7}, "max_new_tokens", 7),
        ({"max_new_tokens": 9}, "max_new_tokens", 9),
        ({"min_tokens": 3}, "min_new_tokens", 3),
        ({"stop": "\n"}, "stop", ["\n"]),
        ({"stop": ["a", "b"]}, "stop", ["a", "b"]),
        ({"stop_token_ids": [5, 6]}, "stop_token_ids", [5, 6]),
        ({"temperature": 0.0}, "temperature", 0.0),
        ({"top_p": 0.5}, "top_p", 0.5),
        ({"top_k": 4}, "top_k", 4),
        ({"min_p": 0.1}, "min_p", 0.1),
        ({"frequency_penalty": 0.5}, "frequency_penalty", 0.5),
        ({"presence_penalty": -0.5}, "presence_penalty", -0.5),
        ({"ignore_eos": True}, "ignore_eos", True),
        ({"regex": r"[a-z]+"}, "regex", r"[a-z]+"),
        ({"regex": ir.REGEX_INT}, "regex", ir.REGEX_INT),
        ({"json_schema": '{"type": "object"}'}, "json_schema", '{"type": "object"}'),
    ],
)
def test_each_gen_option_is_forwarded_in_sampling(server, backend, kwargs, field, value):
    run_one(backend, rl.gen("x", **kwargs))
    assert getattr(sent(server).sampling, field) == value


def test_json_schema_dict_is_sent_as_json(server, backend):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    run_one(backend, rl.gen("x", json_schema=schema))
    assert json.loads(sent(server).sampling.json_schema) == schema


@pytest.mark.parametrize(
    ("make", "regex", "stop", "text"),
    [
        (lambda: rl.gen_int("v"), ir.REGEX_INT, [" ", "\n"], "42"),
        (lambda: rl.gen("v", dtype=int, stop="\n"), ir.REGEX_INT, ["\n", " "], "42"),
        (lambda: rl.gen("v", dtype=float), ir.REGEX_FLOAT, [" ", "\n"], "2.5"),
        (lambda: rl.gen("v", dtype="bool"), ir.REGEX_BOOL, [], "True"),
        (lambda: rl.gen_string("v"), ir.REGEX_STR, [], "<2>"),
    ],
)
def test_dtype_goes_as_sglangs_regex_and_the_variable_holds_the_text(server, backend, make, regex, stop, text):
    state = run_one(backend, make())
    sampling = sent(server).sampling
    assert (sampling.regex, sampling.stop, sampling.dtype) == (regex, stop, None)
    assert state["v"] == text and state.text() == "P:" + text  # text, as SGLang stores it: int(s["v"]) parses


@pytest.mark.parametrize("other", [{"regex": "[0-9]"}, {"json_schema": {"type": "integer"}}])
def test_dtype_with_another_constraint_is_refused_before_any_request(server, backend, other):
    with pytest.raises(InvalidRequest, match="one of dtype, regex and json_schema") as info:
        run_one(backend, rl.gen("v", dtype=int, **other))
    assert info.value.param == "dtype" and not server.of_type(p.GenerateRequest)


def test_run_keywords_are_sampling_defaults_that_gen_options_override(server, backend):
    @rl.function
    def prog(s, topic):
        s += topic + rl.gen("a") + rl.gen("b", max_tokens=3, temperature=0.7)

    prog.run(topic="T", max_new_tokens=11, temperature=0.0, top_p=0.9, backend=backend)
    a, b = server.of_type(p.GenerateRequest)
    assert (a.sampling.max_new_tokens, a.sampling.temperature, a.sampling.top_p) == (11, 0.0, 0.9)
    assert (b.sampling.max_new_tokens, b.sampling.temperature, b.sampling.top_p) == (3, 0.7, 0.9)


def test_return_logprob_is_forwarded_and_logprobs_are_in_meta_info(server, backend):
    state = run_one(backend, rl.gen("x", return_logprob=True, logprob_start_len=1, top_logprobs_num=2))
    req = sent(server)
    assert (req.return_logprob, req.logprob_start_len, req.top_logprobs_num) == (True, 1, 2)
    meta = state.get_meta_info("x")
    assert [tok for _, tok, _ in meta["output_token_logprobs"]] == [ord(c) for c in "<2>"]
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (2, 3)


def test_n_samples_share_one_committed_prefix(server, backend):
    state = run_one(backend, rl.gen("x", n=3))
    reqs = server.of_type(p.GenerateRequest)
    assert reqs[0].sampling.max_new_tokens == 0 and reqs[0].text == "P:"
    assert [r.text for r in reqs[1:]] == ["P:"] * 3
    assert state["x"] == ["<2>"] * 3 and state.text() == "P:<2>"


def test_gen_with_choices_is_a_select(server, backend):
    state = run_one(backend, rl.gen("c", choices=["yes", "no"]))
    assert state["c"] in ("yes", "no")
    assert len(server.of_type(p.ScoreRequest)) == 1 and not server.of_type(p.GenerateRequest)


def test_invalid_options_raise_invalid_request():
    with pytest.raises(InvalidRequest) as info:
        rl.gen("x", dtype=list)
    assert info.value.param == "dtype"
    with pytest.raises(InvalidRequest):
        rl.gen("x", max_tokens=3, max_new_tokens=4)


def test_invalid_sampling_fails_the_program_before_any_request(server, backend):
    with pytest.raises(InvalidRequest) as info:
        run_one(backend, rl.gen("x", top_p=0.0))
    assert info.value.param == "top_p"
    assert not server.of_type(p.GenerateRequest)


def test_regex_constants_match_their_values():
    import re

    assert re.fullmatch(ir.REGEX_INT, "-12") and not re.fullmatch(ir.REGEX_INT, "1.5")
    assert re.fullmatch(ir.REGEX_FLOAT, "3.25") and re.fullmatch(ir.REGEX_BOOL, "False")
    assert re.fullmatch(ir.REGEX_STR, '"hi there"')
