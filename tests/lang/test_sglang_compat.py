"""Programs written for SGLang's frontend, unchanged except for the import."""

from __future__ import annotations

import pytest

import radixrt.lang as sgl
from radixrt.runtime import protocol as p


@sgl.function
def multi_turn_question(s, question_1, question_2):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=256))
    s += sgl.user(question_2)
    s += sgl.assistant(sgl.gen("answer_2", max_tokens=256))


@sgl.function(num_api_spec_tokens=64)
def tree_of_thought(s, question):
    s += sgl.system("You are a helpful assistant.")
    with s.user():
        s += question
    forks = s.fork(3)
    for f in forks:
        f += sgl.assistant(sgl.gen("idea", max_tokens=64, temperature=0.8, stop="\n"))
    forks.join()
    with s.user():
        s += "Pick the best idea (1-3): "
    s += sgl.assistant(sgl.gen_int("best", max_tokens=2))
    s += sgl.user("Is it good? " + sgl.gen("good", choices=["yes", "no"]))
    s += "Answer: " + sgl.gen("short", regex=r"(yes|no)")


@pytest.fixture
def default_backend(server):
    backend = sgl.RuntimeEndpoint(server.address)
    sgl.set_default_backend(backend)
    yield backend
    sgl.set_default_backend(None)
    backend.shutdown()


def test_multi_turn_program_runs_unchanged(server, default_backend):
    state = multi_turn_question.run(question_1="What is 2+2?", question_2="And 3+3?", temperature=0)
    roles = [m["role"] for m in state.messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert state.messages()[2]["content"] == state["answer_1"]
    first, second = server.of_type(p.GenerateRequest)
    assert second.text.startswith(first.text + state["answer_1"])  # the second turn extends the first
    assert first.sampling.temperature == 0 and first.sampling.max_new_tokens == 256


def test_tree_of_thought_program_runs_unchanged(server, default_backend):
    state = tree_of_thought.run(question="How to sort?")
    assert len(state["idea"]) == 3 and state["best"] == "42"  # text, as in SGLang
    assert state["good"] in ("yes", "no")
    regex_req = server.of_type(p.GenerateRequest)[-1]
    assert regex_req.sampling.regex == "(yes|no)"
    commits = [r for r in server.of_type(p.GenerateRequest) if r.sampling.max_new_tokens == 0]
    assert len(commits) == 1 and commits[0].text.endswith("How to sort?<|im_end|>\n")


def test_batch_and_stream_usage_runs_unchanged(server, default_backend):
    states = multi_turn_question.run_batch(
        [{"question_1": f"q{i}", "question_2": "why"} for i in range(3)], progress_bar=True, temperature=0
    )
    assert all(s["answer_2"].startswith("<") for s in states)
    state = multi_turn_question.run(question_1="a", question_2="b", stream=True)
    assert "".join(state.text_iter()) == state.text()
