"""Speculative decoding in the real scheduler (tiny random llama, float32): greedy outputs are the
same with it on and off, alone and batched, from the tree's drafts and the request's own, with
grammars, penalties, logprobs, stop strings inside accepted drafts, retractions and aborts; the
slot books balance after every step (the harness checks them)."""

from __future__ import annotations

import random
import re

from radixrt.runtime.protocol import Abort
from tests.runtime.sched_harness import Harness

PREFIX = list(range(1000, 1100))


def mixed_prompts(seed: int = 0) -> list[list[int]]:
    """Random prompts, prompts ending inside a repeated pattern (own drafts the model may reject),
    and prompts after a shared prefix."""
    rng = random.Random(seed)
    rand = [[rng.randrange(3, 40000) for _ in range(12)] for _ in range(3)]
    patterns = []
    for _ in range(3):
        pat = [rng.randrange(3, 40000) for _ in range(rng.randrange(3, 7))]
        patterns.append(pat * 3 + pat[: rng.randrange(1, len(pat))])
    return rand + patterns + [PREFIX + [rng.randrange(3, 40000) for _ in range(6)] for _ in range(2)]


def run_rounds(h: Harness, requests: list[dict], rounds: int = 2, alone: bool = False) -> list[list[int]]:
    """Run every request `rounds` times. Later rounds find earlier outputs in the tree, and before
    each, decoys: for every earlier output, a cached sequence that starts like it and then goes
    elsewhere (the prompt's last tokens, 4 output tokens, then other tokens), inserted last, so
    drafts read from it are accepted for a few tokens and then rejected."""
    rids: list[str] = []
    for round_ in range(rounds):
        if round_:
            decoys(h, requests, [h.outputs[r] for r in rids[-len(requests) :]])
        for kw in requests:
            rids.append(h.request(**kw))
            if alone:
                h.run()
        h.run()
    h.assert_books_balance()
    assert h.stats()["kv_slots_in_use"] == 0
    h.ran = rids
    return [h.outputs[r] for r in rids]


def decoys(h: Harness, requests: list[dict], outputs: list[list[int]]) -> None:
    rng = random.Random(len(outputs))
    for kw, out in zip(requests, outputs):
        if len(out) > 4:
            h.request(kw["ids"][-3:] + out[:4] + [rng.randrange(3, 40000) for _ in range(8)], max_new_tokens=1)
    h.run()


def on_and_off(model_dir, requests: list[dict], alone: bool = False, **args) -> tuple[list, list, dict]:
    off = run_rounds(Harness(model_dir, **args), requests, alone=alone)
    h = Harness(model_dir, speculative="ngram", **args)
    on = run_rounds(h, requests, alone=alone)
    return off, on, h.stats()


def assert_both_paths(stats: dict) -> None:
    """Drafts were accepted and drafts were rejected."""
    assert 0 < stats["spec_accepted_tokens"] < stats["spec_draft_tokens"], stats


def test_greedy_outputs_are_identical_with_speculation_on_and_off_batched(tiny_model_dir):
    requests = [{"ids": p, "max_new_tokens": 24} for p in mixed_prompts()]
    off, on, stats = on_and_off(tiny_model_dir, requests)
    assert on == off
    assert_both_paths(stats)


def test_greedy_outputs_are_identical_with_speculation_on_and_off_alone(tiny_model_dir):
    requests = [{"ids": p, "max_new_tokens": 24} for p in mixed_prompts(seed=1)[:5]]
    off, on, stats = on_and_off(tiny_model_dir, requests, alone=True)
    assert on == off
    assert_both_paths(stats)


def test_penalties_min_tokens_and_logprobs_see_the_drafts_before_each_row(tiny_model_dir):
    p = mixed_prompts(seed=2)
    requests = [
        {"ids": p[3], "max_new_tokens": 20, "frequency_penalty": 0.5},
        {"ids": p[4], "max_new_tokens": 20, "repetition_penalty": 1.3},
        {"ids": p[5], "max_new_tokens": 20, "presence_penalty": 0.4},
        {"ids": p[0], "max_new_tokens": 20, "return_logprob": True, "top_logprobs_num": 3},
        {"ids": p[1], "max_new_tokens": 20, "min_new_tokens": 12, "stop_token_ids": [7]},
    ]
    h_off, h_on = Harness(tiny_model_dir), Harness(tiny_model_dir, speculative="ngram")
    assert run_rounds(h_on, requests) == run_rounds(h_off, requests)
    assert h_on.stats()["spec_accepted_tokens"] > 0
    pairs = [(h_on.finals[a], h_off.finals[b]) for a, b in zip(h_on.ran, h_off.ran) if h_on.finals[a].output_logprobs]
    assert len(pairs) == 2  # one per round
    assert all(a.output_logprobs == b.output_logprobs for a, b in pairs)
    assert all(a.output_top_logprobs == b.output_top_logprobs for a, b in pairs)


def test_grammars_cut_drafts_and_jump_forward_still_writes_forced_text(tiny_model_dir):
    regexes = [r"(yes|no), and the rest is forced text: (red|blue)", r'\{"name": "[a-z]{1,8}", "age": [0-9]{1,3}\}']
    requests = [{"ids": p, "max_new_tokens": 40, "regex": r} for p in mixed_prompts(seed=3)[:4] for r in regexes]
    for jump in (False, True):
        off, on, stats = on_and_off(tiny_model_dir, requests, disable_jump_forward=not jump)
        assert on == off
        assert stats["spec_accepted_tokens"] > 0
        assert (stats["jump_forward_tokens"] > 0) == jump


def test_stop_strings_inside_an_accepted_draft_end_the_output_where_they_would(tiny_model_dir):
    prompt = mixed_prompts(seed=4)[3]
    plain = Harness(tiny_model_dir)
    rid = plain.request(prompt, max_new_tokens=40, ignore_eos=True)
    plain.run()
    tokenizer = plain.sched.outputs.tokenizer
    text = tokenizer.decode(plain.outputs[rid])
    stops = [text[at : at + 6] for at in (20, 33, 47) if text[at : at + 6].strip()]
    requests = [{"ids": prompt, "max_new_tokens": 40, "ignore_eos": True, "stop": [s]} for s in stops]
    h_off, h_on = Harness(tiny_model_dir), Harness(tiny_model_dir, speculative="ngram")
    for h in (h_off, h_on):  # the full output is in the tree first: every later draft is the right one
        h.request(prompt, max_new_tokens=40, ignore_eos=True)
        h.run()
    assert run_rounds(h_on, requests, rounds=1, alone=True) == run_rounds(h_off, requests, rounds=1, alone=True)
    stopped = [out for out in h_on.finals.values() if out.finish_reason.get("matched") in stops]
    assert len(stopped) == len(stops)
    # accepted drafts beyond the stop were dropped: more drafts accepted than tokens kept
    assert any(out.extra["spec_accepted_tokens"] >= out.completion_tokens for out in stopped)


def test_retractions_keep_outputs_and_leak_no_draft_slots(tiny_model_dir):
    requests = [{"ids": p, "max_new_tokens": 30} for p in mixed_prompts(seed=5)[:6]]
    args = {"kv_slots": 150, "max_running_requests": 8, "decode_reserve_ratio": 0.0}
    h_off = Harness(tiny_model_dir, **args)
    h_on = Harness(tiny_model_dir, speculative="ngram", **args)
    assert run_rounds(h_on, requests) == run_rounds(h_off, requests)
    assert h_on.stats()["retracted"] > 0 and h_on.stats()["spec_accepted_tokens"] > 0


def test_aborts_between_verifications_leak_nothing(tiny_model_dir):
    h = Harness(tiny_model_dir, speculative="ngram")
    p = mixed_prompts(seed=6)
    for _ in range(2):  # the second round drafts from the first's outputs
        rids = [h.request(q, max_new_tokens=60, ignore_eos=True) for q in p[3:6]]
        for _ in range(4):
            h.sched.step()
            h.drain()
            h.sched.cache.check(h.sched.running)
        for rid in rids[:2]:
            h.sched.handle(Abort(rid=rid))
        h.run()
    assert h.stats()["spec_draft_tokens"] > 0
    aborted = [out for out in h.finals.values() if out.finish_reason["type"] == "abort"]
    assert len(aborted) == 4
    h.assert_books_balance()
    assert h.stats()["kv_slots_in_use"] == 0


def test_meta_info_and_stats_count_drafted_and_accepted_tokens(tiny_model_dir):
    h = Harness(tiny_model_dir, speculative="ngram", speculative_tokens=3)
    prompt = mixed_prompts(seed=7)[4]
    first = h.request(prompt, max_new_tokens=20, ignore_eos=True)
    h.run()
    again = h.request(prompt, max_new_tokens=20, ignore_eos=True)
    h.run()
    meta = h.finals[again].extra
    assert h.outputs[again] == h.outputs[first]
    assert meta["spec_accepted_tokens"] == meta["spec_draft_tokens"] > 0  # the tree held the whole output
    assert meta["spec_draft_tokens"] <= 3 * meta["spec_verify_ct"]  # --speculative-tokens 3
    stats = h.stats()
    per_request = [out.extra or {} for out in h.finals.values()]
    assert stats["spec_draft_tokens"] == sum(m.get("spec_draft_tokens", 0) for m in per_request)
    assert stats["spec_accepted_tokens"] == sum(m.get("spec_accepted_tokens", 0) for m in per_request)
    # a verification step counts as a decode step, and steps fall with accepted drafts
    assert stats["decode_steps"] < stats["steps"] and stats["steps"] < 2 * 20


def test_off_drafts_nothing_and_reports_no_speculation(tiny_model_dir):
    h = Harness(tiny_model_dir)
    rid = h.request(mixed_prompts()[3], max_new_tokens=12)
    h.run()
    assert h.stats()["speculative"] == "off" and "spec_draft_tokens" not in h.stats()
    assert not re.search("spec_", str(h.finals[rid].extra))


class FailingOnce:
    """A runner whose next forward raises, then runs as the real one."""

    def __init__(self, runner):
        self.runner, self.failed = runner, False

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def forward(self, batch, pool):
        if not self.failed:
            self.failed = True
            raise RuntimeError("injected")
        return self.runner.forward(batch, pool)


def test_a_failed_verification_step_fails_its_requests_and_returns_every_slot(tiny_model_dir):
    h = Harness(tiny_model_dir, speculative="ngram")
    prompt = mixed_prompts(seed=9)[4]
    h.request(prompt, max_new_tokens=30, ignore_eos=True)
    h.run()
    rid = h.request(prompt, max_new_tokens=30, ignore_eos=True)  # drafts from the first one's output
    for _ in range(3):
        h.sched.step()
        h.drain()
    assert h.stats()["spec_draft_tokens"] > 0
    h.sched.forward.runner = FailingOnce(h.sched.forward.runner)
    h.run()  # checks the books after every step
    assert h.errors[rid].status == 500 and "injected" in h.errors[rid].message
    assert h.stats()["kv_slots_in_use"] == 0
    h.assert_books_balance()


def test_a_prompts_last_chunk_of_one_token_is_prefilled_not_drafted_after(tiny_model_dir):
    # 33 prompt tokens in chunks of 16: the last chunk is the prompt's last token alone, whose
    # pattern has a continuation in the prompt; it must run as a prefill row, with no drafts
    pattern = [501, 502, 503, 504, 505, 506, 507, 508]
    prompt = pattern * 4 + [501]
    outputs = []
    for mode in ("off", "ngram"):
        h = Harness(tiny_model_dir, chunked_prefill_size=16, speculative=mode)
        rid = h.request(prompt, max_new_tokens=2, ignore_eos=True)
        h.run()
        outputs.append(h.outputs[rid])
    assert outputs[0] == outputs[1] and h.stats()["spec_draft_tokens"] == 0


def test_verified_tokens_after_one_that_ends_the_output_are_dropped_with_their_kv():
    from radixrt.runtime.scheduler.forward_step import StepResult
    from radixrt.runtime.scheduler.output_processor import OutputProcessor
    from tests.runtime.scheduler.cache_helpers import new_req

    discarded = []
    outputs = OutputProcessor(None, eos_ids=[2], context_length=100, discard=lambda r, n: discarded.append(n))
    req = new_req([5, 6, 7], max_new_tokens=10)
    outputs.apply(StepResult(req, next_ids=[40, 2, 41, 42], logprobs=[None] * 4))  # EOS second of four
    assert req.output_ids == [40, 2] and req.finish_reason == {"type": "stop", "matched": 2}
    assert discarded == [2]  # the KV of the two verified tokens after it
    req = new_req([5, 6, 7], max_new_tokens=3)
    outputs.apply(StepResult(req, next_ids=[40, 41, 42], logprobs=[None] * 3))
    assert req.output_ids == [40, 41, 42] and req.finish_reason["type"] == "length" and discarded == [2]
