"""Each DSL primitive and the prefix reuse it promises, against a real `radixrt serve` on the
embedded model. Assertions hold whatever the (small) model says: types, grammars, structure,
and cached-token counts."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

import radixrt as sgl
from radixrt.errors import InvalidRequest
from radixrt.token_ids import common_prefix_len
from tests.runtime.server_harness import start_server

pytestmark = pytest.mark.slow

SYSTEM = ("You are the help desk of the Lumen public library. You answer questions about opening "
          "hours, membership, borrowing and returning books, printing, study rooms and events. "
          "Be brief and polite, and say when you do not know. ") * 3  # fmt: skip


@pytest.fixture(scope="module")
def backend():
    server = start_server()
    endpoint = sgl.RuntimeEndpoint(server.zmq_address, timeout=120)
    yield endpoint
    endpoint.shutdown()
    server.shutdown()


def run(program, backend, **kwargs):
    state = program.run(backend=backend, temperature=0, **kwargs)
    state.sync()
    assert state.error() is None, state.error()
    return state


@sgl.function
def typed_values(s):
    s += sgl.user("Give me some values.")
    with s.assistant():
        s += "Pick: " + sgl.select("pick", choices=["red", "green", "blue"])
        s += "\nCount: " + sgl.gen_int("count", max_tokens=4)
        s += "\nRatio: " + sgl.gen("ratio", dtype=float, max_tokens=6)
        s += "\nTrue? " + sgl.gen("flag", dtype=bool)
        s += "\nCode: " + sgl.gen("code", regex=r"[A-Z]{2}-[0-9]{3}", max_tokens=10)
        s += "\nWord: " + sgl.gen_string("word", max_tokens=6)


def test_select_gen_int_dtype_and_regex_give_well_formed_values(backend):
    state = run(typed_values, backend)
    assert state["pick"] in ("red", "green", "blue")
    scores = state.get_meta_info("pick")["scores"]
    assert len(scores) == 3 and scores.index(max(scores)) == ["red", "green", "blue"].index(state["pick"])
    # typed gens hold their text, as in SGLang; the number stops (space, newline) are trimmed
    count, ratio = state["count"], state["ratio"]
    assert re.fullmatch(r"[-+]?[0-9]+", count) and re.fullmatch(r"[-+]?[0-9]*\.?[0-9]+", ratio)
    assert state["flag"] in ("True", "False")
    assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", state["code"])
    assert isinstance(state["word"], str) and state["word"].startswith('"')


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}  # fmt: skip


@sgl.function
def json_person(s):
    s += sgl.user("Describe a person as JSON.")
    s += sgl.assistant(sgl.gen("person", json_schema=PERSON, max_tokens=40, temperature=1.0))


def test_json_schema_gen_validates(backend):
    state = run(json_person, backend)
    jsonschema.validate(json.loads(state["person"]), PERSON)


@sgl.function
def branches(s):
    s += sgl.user("Name a fruit.")
    forks = s.fork(3)
    for i, f in enumerate(forks):
        f += sgl.assistant(f"Fruit {i}: " + sgl.gen("fruit", max_tokens=4))
    s["branch_texts"] = [f.text() for f in forks]
    forks.join(mode="concate_and_append")


def test_fork_branches_see_the_parent_only_and_join_appends_in_order(backend):
    state = run(branches, backend)
    parent = state.text()[: state.text().index("<|im_start|>assistant")]
    texts = state["branch_texts"]
    for i, text in enumerate(texts):
        assert text.startswith(parent) and f"Fruit {i}: " in text
        assert all(f"Fruit {j}: " not in text for j in range(3) if j != i)
    appended = state.text()[len(parent) :]
    assert appended == "".join(t[len(parent) :] for t in texts)


@sgl.function
def scoped(s):
    s += sgl.user("Say hello.")
    with s.var_scope("greeting"):
        s += "Hello, " + sgl.gen("who", max_tokens=3, stop="\n") + "!"
    s += " Done."


def test_var_scope_captures_exactly_its_text(backend):
    state = run(scoped, backend)
    assert state["greeting"] == "Hello, " + state["who"] + "!"
    assert state.text().endswith(state["greeting"] + " Done.")


@sgl.function
def story(s):
    s += sgl.user("Tell a very short story.")
    s += sgl.assistant(sgl.gen("story", max_tokens=24))


def test_streamed_chunks_concatenate_to_the_variable(backend):
    state = story.run(backend=backend, temperature=0, stream=True)
    pieces = list(state.text_iter("story"))
    assert len(pieces) > 1 and "".join(pieces) == state["story"]


@sgl.function
def five_ways(s):
    s += sgl.system(SYSTEM)
    s += sgl.user("Suggest an activity.")
    forks = s.fork(5)
    for f in forks:
        f += sgl.assistant(sgl.gen("idea", max_tokens=3))
    forks.join()


def test_a_fork_of_five_computes_the_shared_prefix_once(backend):
    report = run(five_ways, backend).cache_report()
    commits = [r for r in report.records if r.kind == "commit"]
    branches = [r for r in report.records if r.branch]
    assert len(commits) == 1 and len(branches) == 5
    assert commits[0].prompt_tokens > 100
    assert all(r.cached_tokens >= commits[0].prompt_tokens - 1 for r in branches)


@sgl.function
def two_turns(s):
    s += sgl.system(SYSTEM)
    s += sgl.user("When do you open?")
    s += sgl.assistant(sgl.gen("a1", max_tokens=8))
    s += sgl.user("And on Sundays?")
    s += sgl.assistant(sgl.gen("a2", max_tokens=8))


def test_the_second_turn_reuses_the_first(backend):
    state = run(two_turns, backend)
    first, second = state.get_meta_info("a1"), state.get_meta_info("a2")
    assert second["cached_tokens"] >= first["prompt_tokens"] + first["completion_tokens"] - 1


@sgl.function
def desk(s, question):
    s += sgl.system(SYSTEM)
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=2))


def test_run_batch_of_32_with_one_system_prompt_hits_90_percent_of_the_optimum(backend):
    backend.flush_cache()
    questions = [f"Question {i}: can I borrow {i + 1} books at once?" for i in range(32)]
    states = desk.run_batch([{"question": q} for q in questions], backend=backend, temperature=0,
                            progress_bar=False)  # fmt: skip
    records = [r for s in states for r in s.cache_report().records]
    tokenizer = _tokenizer(backend)
    ids = [tokenizer.encode(r.prompt) for r in records]
    # optimum: every prompt but the first reuses its longest common prefix with another (the last
    # prompt token is always computed); counting the first too makes this an upper bound
    optimum = sum(
        min(max(common_prefix_len(a, b) for j, b in enumerate(ids) if j != i), len(a) - 1) for i, a in enumerate(ids)
    )
    cached = sum(r.cached_tokens for r in records)
    assert optimum > 32 * 100 and cached >= 0.9 * optimum, (cached, optimum)


def _tokenizer(backend):
    from radixrt.runtime.server.tokenizer_manager import load_tokenizer
    from radixrt.workers.model_store import resolve_model

    return load_tokenizer(resolve_model("default"))


@sgl.function
def sglang_style(s, question):  # written exactly as for SGLang
    s += sgl.system("You are a helpful assistant.")
    with s.user():
        s += question
    forks = s.fork(2)
    for f in forks:
        f += sgl.assistant(sgl.gen("idea", max_tokens=8, stop="\n"))
    forks.join()
    with s.user():
        s += "How many ideas did you give?"
    s += sgl.assistant(sgl.gen_int("n", max_tokens=3))


def test_an_sglang_program_runs_unchanged(backend):
    sgl.set_default_backend(backend)
    try:
        state = sglang_style.run(question="How can I save energy at home?", temperature=0)
    finally:
        sgl.set_default_backend(None)
    assert len(state["idea"]) == 2 and re.fullmatch(sgl.REGEX_INT, state["n"])


@sgl.function
def bad_regex(s):
    s += sgl.user("x") + sgl.assistant(sgl.gen("y", regex=r"(?<=a)b", max_tokens=4))


def test_a_bad_regex_raises_the_servers_message_and_others_keep_running(backend):
    with pytest.raises(InvalidRequest, match="regex"):
        bad_regex.run(backend=backend).sync()
    state = run(story, backend)
    assert state.get_meta_info("story")["completion_tokens"] > 0
