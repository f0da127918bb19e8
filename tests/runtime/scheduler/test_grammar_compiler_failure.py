"""Grammars in the real scheduler when the grammar compiler cannot start: the constrained request
gets a 500 naming why, every other request is served, no KV slot leaks, and a later constrained
request tries the compiler again (tiny random llama)."""

from __future__ import annotations

import json
import re

from radixrt.constrained import GrammarCompiler
from tests.runtime.sched_harness import Harness

PROMPT = [5, 17, 230, 4000, 12]


class FlakyCompilerFactory:
    """Fails to build the compiler `failures` times (as a broken tokenizer or cache dir would), then builds it."""

    def __init__(self, model_dir, failures: int, cache_dir=None):
        self.model_dir, self.failures, self.cache_dir = model_dir, failures, cache_dir
        self.calls = 0

    def __call__(self) -> GrammarCompiler:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("tokenizer.json: no such file")
        vocab_size = json.loads((self.model_dir / "config.json").read_text())["vocab_size"]
        return GrammarCompiler(self.model_dir, eos_token_ids=[2], vocab_size=vocab_size, cache_dir=self.cache_dir)


def assert_idle_with_no_slot_held(h: Harness) -> None:
    h.assert_books_balance()
    s = h.stats()
    assert s["running"] == s["waiting"] == s["kv_slots_in_use"] == 0


def test_a_compiler_that_cannot_start_fails_only_the_constrained_request_with_a_500(tiny_model_dir):
    factory = FlakyCompilerFactory(tiny_model_dir, failures=10)
    h = Harness(tiny_model_dir, grammar_compiler=factory)
    before = h.request(PROMPT, max_new_tokens=6)
    constrained = h.request(PROMPT, max_new_tokens=6, regex="(yes|no)")
    after = h.request(PROMPT + [9], max_new_tokens=6)
    h.run()
    error = h.errors[constrained]
    assert error.status == 500
    assert error.message == "the grammar compiler could not start: tokenizer.json: no such file"
    assert constrained not in h.finals and h.outputs[constrained] == []
    assert len(h.outputs[before]) == len(h.outputs[after]) == 6 and set(h.errors) == {constrained}
    assert_idle_with_no_slot_held(h)
    assert "grammar" not in h.stats()  # no compiler to report on


def test_a_later_constrained_request_tries_the_compiler_again_and_is_served(tiny_model_dir, tmp_path):
    factory = FlakyCompilerFactory(tiny_model_dir, failures=1, cache_dir=tmp_path)
    h = Harness(tiny_model_dir, grammar_compiler=factory)
    failed = h.request(PROMPT, max_new_tokens=8, regex="(yes|no)")
    h.run()
    assert h.errors[failed].status == 500
    served = h.request(PROMPT, max_new_tokens=8, regex="(yes|no)")
    h.run()
    assert factory.calls == 2 and served not in h.errors
    assert re.fullmatch("yes|no", h.sched.outputs.tokenizer.decode(h.outputs[served], skip_special_tokens=True))
    assert h.finals[served].finish_reason["type"] == "stop"
    assert_idle_with_no_slot_held(h)
    h.sched.grammars.compiler.close()
