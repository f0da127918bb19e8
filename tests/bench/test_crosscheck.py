"""The outputs cross-check: radixrt and radixrt-nocache must agree program for program on greedy
workloads; a difference is found, located and fails the run, while other systems' differences
are only reported."""

from __future__ import annotations

import json

import msgspec

from radixrt.bench.cli import _exit_status, main
from radixrt.bench.crosscheck import compare, crosscheck, failure_lines
from radixrt.bench.runner import run_workload
from radixrt.bench.systems import Session
from radixrt.bench.workloads import WORKLOADS
from radixrt.lang.backends.base import Backend


class AppendsToOneAnswer(Backend):
    """Forwards to `inner`, but the `victim`-th generation comes back with "!" appended: a system
    whose cache hands back a wrong token would look like this."""

    def __init__(self, inner: Backend, victim: int):
        self.inner, self.victim, self.calls = inner, victim, 0

    def chat_template(self):
        return self.inner.chat_template()

    def generate(self, prompt, sampling, *args, **kwargs):
        result = self.inner.generate(prompt, sampling, *args, **kwargs)
        self.calls += sampling.max_new_tokens > 0
        return result if self.calls != self.victim else msgspec.structs.replace(result, text=result.text + "!")

    def score(self, prefix, continuations):
        return self.inner.score(prefix, continuations)

    def flush_cache(self):
        self.inner.flush_cache()

    def get_server_info(self):
        return self.inner.get_server_info()

    def shutdown(self):
        """The inner backend belongs to the test's session."""


def test_identical_outputs_agree_fully():
    outputs = [{"answer": " A"}, {"judgement": ["x", "y"], "score": " 7"}]
    pair = compare(outputs, [dict(o) for o in outputs])
    assert pair["identical_programs"] == pair["programs"] == 2
    assert pair["program_agreement"] == pair["field_agreement"] == 1.0
    assert pair["first_difference"] is None


def test_a_difference_is_located_by_program_field_and_character():
    base = [{"answer": " A"}, {"judgement": ["same", "the river runs"], "score": " 7"}]
    other = [{"answer": " A"}, {"judgement": ["same", "the river ran"], "score": " 7"}]
    pair = compare(base, other)
    assert pair["identical_programs"] == 1 and pair["field_agreement"] == 2 / 3  # a list is one field
    diff = pair["first_difference"]
    assert diff["program"] == 1 and diff["field"] == "judgement" and diff["char"] == len("same\u241ethe river r")
    assert diff["radixrt"].endswith("runs") and diff["other"].endswith("ran")


def test_a_failed_program_counts_as_different():
    pair = compare([{"answer": " A"}], [None])
    assert pair["identical_programs"] == 0 and pair["first_difference"]["other"] == "(failed)"


def test_only_radixrt_nocache_and_nospec_must_match_and_only_on_greedy_workloads():
    base, off = [{"a": "x"}], [{"a": "y"}]
    check = crosscheck({"radixrt": base, "radixrt-nocache": base, "transformers": off, "llamacpp": off}, greedy=True)
    assert check["failed"] == []
    assert check["pairs"]["transformers"]["identical_programs"] == 0
    check = crosscheck({"radixrt": base, "radixrt-nocache": off, "radixrt-nospec": off}, greedy=True)
    assert check["failed"] == ["radixrt-nocache", "radixrt-nospec"]
    assert "MISMATCH" in failure_lines("few_shot", check)[0]
    assert crosscheck({"radixrt": base, "radixrt-nocache": off}, greedy=False)["failed"] == []


def test_a_wrong_answer_from_a_real_server_fails_the_run(radixrt_session, encode):
    workload = WORKLOADS["few_shot"]
    good = run_workload(workload, radixrt_session, num_programs=4, parallel=1, seed=3, encode=encode)
    tampered = Session("radixrt-nocache", AppendsToOneAnswer(radixrt_session.backend, victim=3))
    bad = run_workload(workload, tampered, num_programs=4, parallel=1, seed=3, encode=encode)
    check = crosscheck({"radixrt": good.outputs, "radixrt-nocache": bad.outputs}, greedy=True)
    assert check["failed"] == ["radixrt-nocache"]
    assert check["pairs"]["radixrt-nocache"]["identical_programs"] == 3
    assert check["pairs"]["radixrt-nocache"]["first_difference"]["program"] == 2
    results = {"workloads": {"few_shot": {"systems": {"radixrt": good.figures}, "crosscheck": check}}}
    assert _exit_status(results) == 1


def test_radixrt_nocache_and_nospec_agree_token_for_token(bench_model_dir, tmp_path):
    out = tmp_path / "out.json"
    code = main(["--workload", "few_shot,multi_turn,json_decode,rag_quote", "--num-programs", "2", "--interactive", "1",
                 "--systems", "radixrt,radixrt-nocache,radixrt-nospec", "--model", str(bench_model_dir), "--no-micro",
                 "--json", str(out)])  # fmt: skip
    results = json.loads(out.read_text())
    for name, entry in results["workloads"].items():
        for other in ("radixrt-nocache", "radixrt-nospec"):
            pair = entry["crosscheck"]["pairs"][other]
            assert pair["identical_programs"] == pair["programs"] == 2, (name, other, pair["first_difference"])
        # radixrt speculates (what it drafted is recorded, both ways of running), radixrt-nospec does not
        assert (
            "spec_draft_tokens" in entry["systems"]["radixrt"]
            and "spec_draft_tokens" in entry["interactive"]["radixrt"]
        )
        assert "spec_draft_tokens" not in entry["systems"]["radixrt-nospec"]
        assert entry["ratios"]["radixrt-nospec"]["interactive_output_tokens_per_s"] > 0
    assert results["workloads"]["multi_turn"]["systems"]["radixrt"]["spec_accepted_tokens"] > 0
    assert code == 0
