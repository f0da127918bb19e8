from __future__ import annotations

import radixrt.lang as rl
from radixrt.lang.backends.runtime_endpoint import RuntimeEndpoint
from radixrt.runtime import protocol as p

from .fake_server import FakeServer


@rl.function
def branches(s, n=3, mode="gather_variable"):
    s += "Root:"
    forks = s.fork(n)
    for i, f in enumerate(forks):
        f += f"B{i}:" + rl.gen("x", max_tokens=4)
    forks.join(mode)
    s += "|end"


def run_held(program, hold: int, **kwargs):
    with FakeServer(hold=hold) as server:
        backend = RuntimeEndpoint(server.address, timeout=10)
        try:
            state = program.run(backend=backend, **kwargs)
            state.text()
        finally:
            backend.shutdown()
    return server, state


def test_fork_commits_the_prefix_once_then_runs_branches_concurrently():
    server, _ = run_held(branches, hold=3)
    reqs = server.of_type(p.GenerateRequest)
    commit, rest = reqs[0], reqs[1:]
    assert (commit.text, commit.sampling.max_new_tokens) == ("Root:", 0)
    assert all(r.sampling.max_new_tokens == 4 for r in rest) and len(rest) == 3
    assert server.max_in_flight == 3  # the three branches were in flight together


def test_a_server_without_a_radix_cache_gets_no_commit():
    with FakeServer(hold=3) as server:
        server.stats = {"radix_cache": False}  # `radixrt serve --disable-radix-cache`
        backend = RuntimeEndpoint(server.address, timeout=10)
        try:
            state = branches.run(backend=backend)
            state.text()
        finally:
            backend.shutdown()
    reqs = server.of_type(p.GenerateRequest)
    assert len(reqs) == 3 and all(r.sampling.max_new_tokens == 4 for r in reqs)
    assert state.text().startswith("Root:")


def test_branches_see_the_parent_text_and_not_each_other():
    server, state = run_held(branches, hold=3)
    prompts = sorted(r.text for r in server.of_type(p.GenerateRequest)[1:])
    assert prompts == ["Root:B0:", "Root:B1:", "Root:B2:"]
    assert state["x"] == ["<8>", "<8>", "<8>"]  # gather_variable: one value per branch
    assert state.text() == "Root:|end"


def test_concate_and_append_appends_branch_texts_in_branch_order():
    # replies come back newest first; the join still appends branch 0, 1, 2
    _, state = run_held(branches, hold=3, mode="concate_and_append")
    assert state.text() == "Root:B0:<8>B1:<8>B2:<8>|end"


def test_fork_before_any_text_sends_no_commit(server, backend):
    @rl.function
    def prog(s):
        forks = s.fork(2)
        forks += lambda i: f"Q{i}" + rl.gen("a")
        forks.join()

    state = prog.run(backend=backend)
    reqs = server.of_type(p.GenerateRequest)
    assert sorted(r.text for r in reqs) == ["Q0", "Q1"]
    assert state["a"] == ["<2>", "<2>"]


def test_group_add_applies_to_every_branch(server, backend):
    @rl.function
    def prog(s):
        s += "S"
        forks = s.fork(2)
        forks += "-shared"
        forks += lambda i: f"-{i}"
        forks[1] += "!"
        assert len(forks) == 2
        forks.join("concate_and_append")

    assert prog.run(backend=backend).text() == "S-shared-0-shared-1!"


def test_nested_forks_gather_into_their_parents(server, backend):
    @rl.function
    def prog(s):
        s += "A"
        outer = s.fork(2)
        for i, f in enumerate(outer):
            f += str(i)
            inner = f.fork(2)
            inner += lambda j: str(j) + rl.gen("leaf")
            inner.join()
        outer.join()

    state = prog.run(backend=backend)
    assert state["leaf"] == [["<3>", "<3>"], ["<3>", "<3>"]]
    commits = [r.text for r in server.of_type(p.GenerateRequest) if r.sampling.max_new_tokens == 0]
    assert sorted(commits) == ["A", "A0", "A1"]


def test_copy_is_an_independent_state(server, backend):
    @rl.function
    def prog(s):
        s += "base"
        c = s.copy()
        c += "+copy"
        s += "+orig"
        return c.text()

    state = prog.run(backend=backend)
    assert state.ret_value == "base+copy" and state.text() == "base+orig"
