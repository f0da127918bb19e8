from __future__ import annotations

import asyncio

import pytest

import radixrt.lang as rl
from radixrt.errors import InvalidRequest
from radixrt.lang.backends.runtime_endpoint import RuntimeEndpoint
from radixrt.runtime import protocol as p

from .fake_server import FakeServer


@rl.function
def qa(s, question):
    s += "Shared context. Q: " + question + "\nA:"
    s += rl.gen("answer", max_tokens=16)


def test_run_binds_positional_and_keyword_arguments(server, backend):
    assert qa.run("why?", backend=backend)["answer"] == "<26>"
    assert qa.run(question="how?", backend=backend).text() == "Shared context. Q: how?\nA:<26>"


def test_calling_the_program_runs_it_with_the_default_backend(server, backend):
    rl.set_default_backend(backend)
    try:
        assert qa(question="q")["answer"] == "<23>"
    finally:
        rl.set_default_backend(None)


def test_a_program_called_with_a_state_runs_inline(server, backend):
    @rl.function
    def outer(s):
        s += "Outer. "
        qa(s, "inner?")

    assert outer.run(backend=backend).text() == "Outer. Shared context. Q: inner?\nA:<35>"


def test_run_batch_runs_every_program_with_several_in_flight():
    with FakeServer(hold=4) as server:
        backend = RuntimeEndpoint(server.address, timeout=10)
        questions = [f"q{i}" for i in range(8)]
        states = qa.run_batch([{"question": q} for q in questions], backend=backend, progress_bar=False)
        backend.shutdown()
    assert [s["answer"] for s in states] == ["<24>"] * 8
    assert [s.text().split("Q: ")[1][:2] for s in states] == questions
    assert server.max_in_flight >= 4


def test_run_batch_sends_the_traced_shared_prefix_once_first(server, backend):
    qa.run_batch([{"question": "a"}, {"question": "b"}], backend=backend)
    first = server.of_type(p.GenerateRequest)[0]
    assert (first.text, first.sampling.max_new_tokens) == ("Shared context. Q: ", 0)


def test_server_error_raises_in_the_caller_with_its_message(server, backend):
    server.errors["BOOM"] = "grammar failed to compile"
    with pytest.raises(InvalidRequest, match="grammar failed to compile"):
        qa.run(question="BOOM", backend=backend)


def test_a_failing_program_leaves_the_rest_of_the_batch_intact(server, backend):
    server.errors["BOOM"] = "grammar failed to compile"
    states = qa.run_batch([{"question": q} for q in ("ok1", "BOOM", "ok2")], backend=backend)
    assert states[0]["answer"] == "<25>" and states[2]["answer"] == "<25>"
    assert isinstance(states[1].error(), InvalidRequest)
    with pytest.raises(InvalidRequest, match="grammar failed to compile"):
        states[1]["answer"]
    assert states[0].error() is None


def test_error_in_a_branch_does_not_stop_its_siblings(server, backend):
    server.errors["BOOM"] = "bad branch"

    @rl.function
    def prog(s):
        s += "R"
        forks = s.fork(2)
        forks[0] += "BOOM" + rl.gen("x")
        forks[1] += "fine" + rl.gen("x")
        return forks

    with pytest.raises(InvalidRequest, match="bad branch"):
        prog.run(backend=backend)
    ok = [r for r in server.of_type(p.GenerateRequest) if r.text == "Rfine"]
    assert len(ok) == 1


def test_program_body_exceptions_propagate(server, backend):
    @rl.function
    def prog(s):
        s += "x"
        raise ValueError("user bug")

    with pytest.raises(ValueError, match="user bug"):
        prog.run(backend=backend)


def test_variable_assignment_and_reading_keep_program_order(server, backend):
    @rl.function
    def prog(s):
        s += "A" + rl.gen("x")
        s["y"] = s["x"] + "!"
        s += s["y"]

    state = prog.run(backend=backend)
    assert state["y"] == "<1>!" and state.text() == "A<1><1>!"
    with pytest.raises(KeyError):
        state["missing"]


def test_an_ended_program_takes_variables_but_not_text(server, backend):
    @rl.function
    def prog(s):
        s += "N: " + rl.gen_int("n")
        forks = s.fork(2)
        for f in forks:
            f += rl.gen("idea")
        return forks

    state = prog.run(backend=backend)
    state["n"] = int(state["n"])  # SGLang programs post-process results this way
    state["note"] = "added after the end"
    state.stream_executor.end()  # ending twice changes nothing
    assert (state["n"], state["note"]) == (42, "added after the end")
    with pytest.raises(RuntimeError, match="the program has ended; cannot add text"):
        state += "more"
    with pytest.raises(RuntimeError, match="cannot add gen"):
        state += rl.gen("late")
    with pytest.raises(RuntimeError, match="cannot add text"):
        state.ret_value[0] += "into a branch"
    assert state.text() == "N: 42" and state.error() is None
    assert len(server.of_type(p.GenerateRequest)) == 4  # gen_int, the fork's commit, two branches


def test_a_variable_set_while_a_streamed_gen_runs_is_applied_after_the_gen(server, backend):
    server.stream_gap = 0.05  # the gen is still streaming when the caller sets the variable
    state = qa.run(question="q", backend=backend, stream=True)
    state["answer"] = "mine"
    assert state["answer"] == "mine" and state.text().endswith("<23>")


def test_a_failed_program_still_takes_variables_after_its_end(server, backend):
    server.errors["BOOM"] = "bad prompt"

    @rl.function
    def prog(s):
        s += "BOOM" + rl.gen("x")

    states = prog.run_batch([{}], backend=backend)
    states[0]["x"] = "fallback"  # a failed gen's name can be set again once the program ended
    assert states[0]["x"] == "fallback" and isinstance(states[0].error(), InvalidRequest)


def test_var_scope_captures_exactly_its_text(server, backend):
    @rl.function
    def prog(s):
        s += "before "
        with s.var_scope("inside"):
            s += "in:" + rl.gen("g")
        s += " after"

    state = prog.run(backend=backend)
    assert state["inside"] == "in:<10>"
    assert state.text() == "before in:<10> after"


def test_stream_chunks_concatenate_to_the_final_variable(server, backend):
    state = qa.run(question="stream?", backend=backend, stream=True)
    pieces = list(state.text_iter("answer"))
    assert "".join(pieces) == state["answer"] == "<29>"
    assert len(server.of_type(p.GenerateRequest)) == 1 and server.of_type(p.GenerateRequest)[0].stream


def test_endpoint_streams_each_server_chunk_in_order(server, backend):
    pieces: list[str] = []
    result = backend.generate("x" * 1234, p.SamplingParams(max_new_tokens=8), on_chunk=pieces.append)
    assert pieces == ["<1", "23", "4>"] and result.text == "<1234>"


def test_stream_of_the_whole_text_ends_with_the_program(server, backend):
    state = qa.run(question="all?", backend=backend, stream=True)
    assert "".join(state.text_iter()) == state.text() == "Shared context. Q: all?\nA:<26>"


def test_async_stream_yields_the_same_pieces(server, backend):
    async def collect(state):
        return [piece async for piece in state.text_async_iter("answer")]

    state = qa.run(question="async?", backend=backend, stream=True)
    assert "".join(asyncio.run(collect(state))) == "<28>"


def test_stream_raises_the_server_error_at_the_end(server, backend):
    server.errors["BOOM"] = "too long"
    state = qa.run(question="BOOM", backend=backend, stream=True)
    with pytest.raises(InvalidRequest, match="too long"):
        list(state.text_iter())


def test_non_stream_text_iter_yields_the_result_once(server, backend):
    state = qa.run(question="q", backend=backend)
    assert list(state.text_iter("answer")) == ["<23>"]


def test_meta_info_reports_prompt_cached_and_completion_tokens(server, backend):
    qa.run(question="first", backend=backend)
    meta = qa.run(question="second", backend=backend).get_meta_info("answer")
    assert meta["prompt_tokens"] == 28 and meta["completion_tokens"] == 4
    assert meta["cached_tokens"] == len("Shared context. Q: ")


def test_flush_cache_and_server_info(server, backend):
    rl.flush_cache(backend)
    assert rl.get_server_info(backend)["received"] == 2


def test_api_key_travels_with_every_model_request(server):
    backend = RuntimeEndpoint(server.address, api_key="k-123", timeout=10)
    try:
        qa.run_batch([{"question": "a"}, {"question": "b"}], backend=backend)

        @rl.function
        def pick(s):
            s += rl.select("c", choices=["x", "y"])

        pick.run(backend=backend)
    finally:
        backend.shutdown()
    requests = server.of_type(p.GenerateRequest) + server.of_type(p.ScoreRequest)
    assert len(requests) == 4 and {r.api_key for r in requests} == {"k-123"}


def test_streaming_a_gathered_variable_yields_its_value_once(server, backend):
    @rl.function
    def prog(s):
        s += "R"
        forks = s.fork(2)
        forks += rl.gen("idea")
        forks.join()

    state = prog.run(backend=backend, stream=True)
    assert list(state.text_iter("idea")) == ["['<1>', '<1>']"]
