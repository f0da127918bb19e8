"""Where drafts come from (ranking, limits, grammar cuts) and when a request drafts at all (the
acceptance rate against the measured cost of a verification row), without a model."""

from __future__ import annotations

import random

import pytest

from radixrt.radix_cache.pool import KVPool, ReqToToken
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.scheduler.cache_manager import CacheManager
from radixrt.runtime.scheduler.draft_policy import (
    FIRST_PAUSE,
    MAX_PAUSE,
    PRIOR_FIXED_ROWS,
    Acceptance,
    StepCost,
    worth,
)
from radixrt.runtime.scheduler.speculative import Drafter, DraftState, accepted_len, new_ngram_index
from tests.runtime.scheduler.cache_helpers import cached_sequence, new_req


def drafter(max_tokens: int = 4, context_length: int = 60) -> Drafter:
    pool = KVPool(257, num_layers=1, n_kv_heads=1, head_dim=1)
    cache = CacheManager(pool, ReqToToken(8, 64), ngrams=new_ngram_index(pool.capacity))
    return Drafter(cache, max_tokens, context_length)


def decoding(ids: list[int], output: list[int], max_new_tokens: int = 32):
    req = new_req(ids, max_new_tokens=max_new_tokens)
    req.output_ids = list(output)
    req.spec = DraftState()
    req.spec.acceptance.probe = False
    req.spec.acceptance.hits = 100.0  # drafting pays: full length
    return req


def test_the_acceptance_rule_takes_the_longest_agreeing_prefix():
    assert accepted_len([5, 6, 7], [5, 6, 9, 1]) == 2
    assert accepted_len([5, 6, 7], [4, 6, 7, 1]) == 0
    assert accepted_len([5, 6, 7], [5, 6, 7, 1]) == 3
    assert accepted_len([], [8]) == 0


def test_own_tokens_draft_what_followed_the_latest_occurrence_of_the_longest_suffix():
    d = drafter()
    req = decoding([1, 2, 3, 4, 9, 2, 3, 5, 6, 7], [1, 2, 3])
    assert d.lookup(req, 4) == [4, 9, 2, 3]  # (1, 2, 3) matched, not the later (2, 3)
    req = decoding([1, 2, 3, 4, 9, 2, 3, 5, 6, 7], [8, 2, 3])
    assert d.lookup(req, 4) == [5, 6, 7, 8]  # (2, 3): its latest occurrence; the read runs into the output
    assert d.lookup(decoding([1, 2, 3], [11]), 4) == []


def test_the_tree_drafts_for_longer_matches_and_own_tokens_win_ties():
    d = drafter()
    cached_sequence(d.cache, [50, 60, 70, 80, 90, 91])  # an earlier request
    # the tree matches (60, 70, 80), own tokens only (80)
    assert d.lookup(decoding([80, 1, 2, 60, 70], [80]), 3) == [90, 91]
    # both match (70, 80): own tokens win
    assert d.lookup(decoding([70, 80, 5, 6, 1], [70, 80]), 3) == [5, 6, 1]
    # one token of context is not enough to draft from another request
    assert d.lookup(decoding([1, 2], [80]), 3) == []


def test_drafts_stop_before_max_new_tokens_the_context_and_the_step_budget():
    d = drafter(max_tokens=8, context_length=20)
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
    assert d.propose(decoding(ids, [3], max_new_tokens=4), room=8) == [4, 5]  # 2 outputs left after this one
    assert d.propose(decoding(ids, [3], max_new_tokens=32), room=3) == [4, 5, 6]
    assert d.propose(decoding(ids + [9] * 6, [1, 2, 3], max_new_tokens=32), room=8) == [4]  # context 20
    assert d.propose(decoding(ids, [3], max_new_tokens=2), room=8) == []


class FakeMatcher:
    """Accepts tokens below `limit`; terminates after `end`; forces text after `forced`."""

    def __init__(self, limit: int = 100, end: int | None = None, forced: int | None = None):
        self.limit, self.end, self.forced = limit, end, forced
        self.accepted: list[int] = []

    def accept_token(self, tok: int) -> bool:
        if tok >= self.limit or self.is_terminated():
            return False
        self.accepted.append(tok)
        return True

    def rollback(self, n: int) -> None:
        del self.accepted[len(self.accepted) - n :]

    def is_terminated(self) -> bool:
        return bool(self.accepted) and self.accepted[-1] == self.end

    def jump_forward(self) -> str | None:
        return "forced" if self.accepted and self.accepted[-1] == self.forced else None


@pytest.mark.parametrize(
    ("matcher", "expected"),
    [
        (FakeMatcher(), [4, 5, 60, 7]),
        (FakeMatcher(limit=50), [4, 5]),  # 60 is not allowed: cut before it
        (FakeMatcher(end=5), [4, 5]),  # the grammar ends at 5: nothing follows
        (FakeMatcher(forced=5), [4, 5]),  # jump-forward writes what follows 5
    ],
)
def test_a_grammar_cuts_the_draft_and_its_matcher_ends_where_it_began(matcher, expected):
    d = drafter()
    req = decoding([1, 2, 3, 4, 5, 60, 7, 8, 1, 2], [3])
    req.matcher = matcher
    assert d.propose(req, room=8) == expected
    assert matcher.accepted == []


def test_worth_counts_the_draft_tokens_whose_acceptance_beats_the_row_cost():
    assert worth(0.9, 0.25, 8) == 8  # 0.9**8 = 0.43
    assert worth(0.5, 0.1, 8) == 3  # 0.5**3 = 0.125 > 0.1 >= 0.5**4
    assert worth(0.5, 0.5, 8) == 0
    assert worth(0.99, 0.0, 5) == 5


def test_a_request_whose_drafts_fail_pauses_longer_each_time_and_probes_in_between():
    a = Acceptance()
    assert a.draft_len(8, 0.3) == 8  # a fresh request probes at full length
    pauses = []
    for _ in range(6):
        a.record(drafted=8, accepted=0, row_cost=0.3)
        steps = 0
        while a.draft_len(8, 0.3) == 0:
            steps += 1
        pauses.append(steps)
    assert pauses[:3] == [FIRST_PAUSE, 2 * FIRST_PAUSE, 4 * FIRST_PAUSE]
    assert pauses[-1] == MAX_PAUSE
    a.record(drafted=8, accepted=8, row_cost=0.3)  # the probe succeeds: drafting resumes, pause reset
    assert a.draft_len(8, 0.3) > 0 and a.pause == FIRST_PAUSE


def test_a_request_drafts_less_when_rows_cost_more():
    a = Acceptance(hits=8.0, misses=2.0, probe=False)  # alpha 0.8
    assert a.draft_len(8, 0.1) == 8 and a.draft_len(8, 0.4) == 4 and a.draft_len(8, 0.85) == 0


def test_the_step_cost_fit_recovers_fixed_and_per_row_seconds():
    cost = StepCost()
    assert cost.row_cost(32) == pytest.approx(32 / (32 + PRIOR_FIXED_ROWS))  # nothing measured yet: the prior
    for i in range(40):
        rows = 1 + (i * 7) % 40
        cost.observe(rows, 0.020 + 0.002 * rows)
    fixed, per_row = cost.fit()
    assert fixed == pytest.approx(0.020) and per_row == pytest.approx(0.002)
    assert cost.row_cost(1) == pytest.approx(0.002 / 0.022)
    assert cost.row_cost(32) == pytest.approx(0.064 / 0.084)


def test_the_step_cost_waits_for_steps_of_different_sizes():
    cost = StepCost()
    for _ in range(50):
        cost.observe(4, 0.03)
    assert cost.fit() is None and cost.row_cost(4) == pytest.approx(4 / (4 + PRIOR_FIXED_ROWS))


def test_a_full_batch_of_equal_steps_keeps_the_last_fit():
    """Steps that all have the same rows cannot separate fixed from per-row seconds; the fit made
    before stays (a cheap fallback would let the full batch draft, and the policy oscillate)."""
    cost = StepCost()
    for i in range(40):
        rows = 1 + (i * 7) % 40
        cost.observe(rows, 0.005 + 0.002 * rows)
    before = cost.row_cost(64)
    assert before == pytest.approx(0.128 / 0.133)
    noise = random.Random(0)
    for _ in range(1000):
        cost.observe(64, (0.005 + 0.002 * 64) * noise.uniform(0.95, 1.05))
    assert cost.fit() is None and cost.row_cost(64) == pytest.approx(before)


def test_probes_shrink_as_rows_get_dearer():
    assert Acceptance().draft_len(8, 0.1) == 8  # rows cheap: a fresh request probes at full length
    assert Acceptance().draft_len(8, 0.7) == 3  # 0.9**3 = 0.73 > 0.7
    assert Acceptance().draft_len(8, 0.95) == 1  # a full batch: one token, never none


def test_bad_speculation_flags_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="speculative must be one of"):
        ServerArgs(speculative="eagle")
    for bad in (0, 33):
        with pytest.raises(ValueError, match=r"speculative_tokens must be in \[1, 32\]"):
            ServerArgs(speculative="ngram", speculative_tokens=bad)
