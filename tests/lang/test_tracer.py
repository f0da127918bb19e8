from __future__ import annotations

import pytest

import radixrt.lang as rl
from radixrt.lang.chat_template import ChatTemplate
from radixrt.lang.tracer import trace_program

from .fake_server import SMOL_TEMPLATE


@rl.function
def agent(s, question):
    s += rl.system("You are careful.")
    s += rl.user("Q: " + question)
    forks = s.fork(2)
    for f in forks:
        f += rl.assistant(rl.gen("idea", max_tokens=8))
    forks.join()
    with s.var_scope("pick"):
        s += rl.user("Best? " + rl.select("best", choices=["1", "2"]))
    s += "Because " + s["best"]


EXPECTED_KINDS = [
    "role_begin", "text", "role_end",                       # system
    "role_begin", "text", "argument", "role_end",           # user with the unbound question
    "fork",
    "role_begin", "gen", "role_end",                        # branch 0
    "role_begin", "gen", "role_end",                        # branch 1
    "join",
    "var_scope_begin", "role_begin", "text", "select", "role_end", "var_scope_end",
    "text", "variable",
]  # fmt: skip


def test_trace_records_the_program_graph_without_any_backend():
    assert rl.get_default_backend() is None
    traced = agent.trace()
    assert traced.kinds() == EXPECTED_KINDS


def test_bound_arguments_appear_as_text():
    nodes = list(agent.trace(question="why?").walk())
    assert "argument" not in [n.kind for n in nodes]
    assert "Q: why?" in [n.value for n in nodes if n.kind == "text"]


def test_trace_prints_one_line_per_node_with_branches_indented():
    printed = str(agent.trace())
    lines = printed.splitlines()
    assert lines[0] == "role_begin system" and lines[1] == "  text 'You are careful.'"
    assert "fork 2" in lines and "  branch 1:" in lines
    assert "      gen idea max_new_tokens=8" in lines
    assert "  select best choices=['1', '2']" in lines
    assert lines[-1] == "variable best"


def test_tracing_sends_nothing_and_does_not_change_results(server, backend):
    before = agent.run(question="q", backend=backend).text()
    received = len(server.received)
    agent.trace(question="q")
    assert len(server.received) == received
    assert agent.run(question="q", backend=backend).text() == before


def test_constant_prefix_renders_roles_like_the_interpreter(server, backend):
    template = ChatTemplate.from_jinja(SMOL_TEMPLATE)
    prefix = agent.trace().constant_prefix(lambda: template)
    assert prefix.endswith("<|im_start|>user\nQ: ")
    assert agent.run(question="q", backend=backend).text().startswith(prefix)


def test_a_program_looping_on_a_generated_value_hits_the_node_limit():
    def loops(s):
        while s["x"] != "done":
            s += rl.gen("x")

    with pytest.raises(RuntimeError, match="exceeded 50 nodes"):
        trace_program(loops, (), {}, max_nodes=50)


def test_prefix_only_trace_stops_at_the_first_unknown_value():
    traced = trace_program(agent.func, (), {}, prefix_only=True)
    assert traced.kinds() == ["role_begin", "text", "role_end", "role_begin", "text"]
