"""The DSL against a real `radixrt serve` on the embedded model, over ZMQ and HTTP."""

from __future__ import annotations

import re

import pytest

import radixrt.lang as sgl
from radixrt.errors import InvalidRequest
from tests.runtime.server_harness import SERVER_DEFAULTS

pytestmark = pytest.mark.slow


@sgl.function
def agent(s, question):
    s += sgl.user(question)
    forks = s.fork(2)
    for f in forks:
        f += sgl.assistant(sgl.gen("idea", max_tokens=4))
    forks.join()
    s += sgl.user("Is the sky blue? " + sgl.select("yes_no", choices=["yes", "no"]))
    s += sgl.assistant("Cats have " + sgl.gen_int("legs", max_tokens=3) + " legs.")


@pytest.fixture(scope="module")
def runtime():
    rt = sgl.Runtime(**{k: v for k, v in SERVER_DEFAULTS.items() if k != "port"}, start_timeout=300)
    yield rt
    rt.shutdown()
    assert rt.server.process.returncode == 0


@pytest.fixture(scope="module")
def server(runtime):
    return runtime.server


@pytest.fixture
def zmq_backend(server):
    endpoint = sgl.RuntimeEndpoint(server.zmq_address, timeout=120)
    yield endpoint
    endpoint.shutdown()


@pytest.mark.parametrize("transport", ["zmq", "http"])
def test_agent_program_runs_with_the_model_chat_template(server, transport):
    backend = sgl.RuntimeEndpoint(server.zmq_address if transport == "zmq" else server.url, timeout=120)
    try:
        state = agent.run(question="Name a fruit.", backend=backend, temperature=0)
        state.sync()
    finally:
        backend.shutdown()
    assert state.messages()[0]["role"] == "system"  # SmolLM2's default system prompt, once
    assert state.text().count("<|im_start|>system") == 1
    assert len(state["idea"]) == 2 and state["yes_no"] in ("yes", "no")
    assert re.fullmatch(sgl.REGEX_INT, state["legs"]) and f"Cats have {state['legs']} legs." in state.text()
    report = state.cache_report()
    commit = next(r for r in report.records if r.kind == "commit")
    branches = [r for r in report.records if r.branch]
    assert all(r.cached_tokens >= commit.prompt_tokens - 1 for r in branches)  # the prefix was shared


@sgl.function
def answer(s, question):
    s += sgl.user(question) + sgl.assistant(sgl.gen("a", max_tokens=6))


def test_greedy_programs_repeat_exactly(zmq_backend):
    first = answer.run(question="Name a color.", backend=zmq_backend, temperature=0).text()
    assert answer.run(question="Name a color.", backend=zmq_backend, temperature=0).text() == first


def test_a_rejected_program_fails_alone_in_a_batch(zmq_backend):
    too_long = "word " * 10_000
    states = answer.run_batch([{"question": "Hi"}, {"question": too_long}], backend=zmq_backend, temperature=0)
    assert states[0].error() is None and states[0]["a"]
    assert isinstance(states[1].error(), InvalidRequest)


def test_a_runtime_serves_as_the_default_backend(runtime):
    sgl.set_default_backend(runtime)
    try:
        state = answer.run(question="Say hi.", temperature=0)
    finally:
        sgl.set_default_backend(None)
    assert state["a"] and state.get_meta_info("a")["completion_tokens"] > 0
