from __future__ import annotations

import radixrt.lang as rl
from radixrt.lang.cache_report import CacheReport, CallLog, CallRecord


@rl.function
def prog(s):
    s += "Context " + rl.gen("a")
    forks = s.fork(2)
    forks += lambda i: ["Left", "Right"][i] + rl.gen("x")
    forks.join()
    s += "Choose " + rl.select("c", choices=["p", "q"])


def test_report_lists_every_request_of_the_program_and_its_forks(server, backend):
    report = prog.run(backend=backend).cache_report()
    rows = sorted((r.kind, r.name, r.branch, r.prompt_tokens, r.cached_tokens) for r in report.records)
    assert rows == [
        ("commit", None, "", 11, 11),  # "Context <8>": prompt + output of gen a, already cached
        ("gen", "a", "", 8, 0),
        ("gen", "x", "0", 15, 11),
        ("gen", "x", "1", 16, 11),
        ("select", "c", "", 19, 11),  # "Context <8>Choose p"
    ]
    assert report.prompt_tokens == 69 and report.cached_tokens == 44


def test_a_miss_shows_where_the_prompt_left_the_cached_prefix(server, backend):
    report = prog.run(backend=backend).cache_report()
    branch0 = next(r for r in report.misses if r.branch == "0")
    assert branch0.miss_position == len("Context <8>")
    assert branch0.snippet() == "Context <8>⟂Left"
    assert "miss at char ~11: 'Context <8>⟂Left'" in str(report)
    assert sorted(r.kind for r in report.misses) == ["gen", "gen", "gen", "select"]  # not the commit


def test_miss_position_is_exact_when_the_server_gives_cached_chars():
    estimated = CallRecord("gen", "g", "", "abcdefgh", prompt_tokens=4, cached_tokens=1)
    exact = CallRecord("gen", "g", "", "abcdefgh", prompt_tokens=4, cached_tokens=1, cached_chars=3)
    assert estimated.miss_position == 2 and not estimated.exact
    assert exact.miss_position == 3 and exact.snippet() == "abc⟂defgh"
    # the server recomputes the last prompt token for its logits: that alone is no miss
    assert CallRecord("gen", "g", "", "ab", prompt_tokens=2, cached_tokens=1).miss_position is None


def test_each_call_shows_its_accepted_drafts_from_meta_info():
    log = CallLog()
    log.record("gen", "a", "", "Hello", {"prompt_tokens": 2, "cached_tokens": 1,
                                         "spec_draft_tokens": 12, "spec_accepted_tokens": 9})  # fmt: skip
    log.record("gen", "b", "", "Hi", {"prompt_tokens": 2, "cached_tokens": 1})  # drafted nothing
    report = CacheReport(log.records())
    assert (report.draft_tokens, report.accepted_drafts) == (12, 9)
    lines = str(report).splitlines()
    assert lines[0].endswith("; drafts: 9/12 accepted")
    assert lines[1].endswith("drafts 9/12") and "drafts" not in lines[2]
