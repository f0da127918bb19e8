"""Speculative decoding with temperature > 0 leaves the output distribution the model's.

Statistical test: a tiny random llama with a 64-token vocabulary and large weights (peaked
distributions) samples two prompts N times each with speculation off and on; a chi-square test of
homogeneity compares the token frequencies at each output position and of whole outputs. Under a
correct implementation the ten tests together fail with probability at most FALSE_ALARM
(Bonferroni); the run is seeded, so its result is fixed. The drafts are fixed tokens, not samples
of the model (a draft that is itself a sample would pass even a rule that accepts everything): a
cached decoy per prompt holds the prompt and then, per output position, its most or second most
frequent token, and all requests draft from them at once.

Exact test: where logits are the same bits (batch-invariant forwards), a seeded request draws the
same tokens with speculation on and off (verification reuses the noise each step would have used).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from radixrt.runtime.scheduler.draft_policy import StepCost
from tests.runtime.sched_harness import Harness
from tests.runtime.scheduler.test_speculative import mixed_prompts, run_rounds
from tests.tiny_models import write_tiny_llama

FALSE_ALARM = 1e-3
SAMPLES = 400  # per prompt and side
NEW_TOKENS = 4
# (prompt, the rank of the decoy's token at output positions 0-3: 0 the most frequent, 1 the second)
CASES = [([5, 9, 14, 22, 5, 9, 14, 22, 5, 9], (0, 1, 1, 0)), ([7, 11, 3, 7, 11, 3, 7], (0, 0, 1, 1))]


@pytest.fixture(scope="module")
def peaked_model_dir(tmp_path_factory, embedded_model_dir):
    return write_tiny_llama(tmp_path_factory.mktemp("peaked"), embedded_model_dir, vocab_size=64, initializer_range=1.0)


def sample(model_dir, decoys: list[list[int]] | None = None, **args) -> tuple[list[list[tuple[int, ...]]], dict]:
    """SAMPLES outputs of each case's prompt, all in flight at once (so all draft from the decoys)."""
    h = Harness(model_dir, max_running_requests=SAMPLES * len(CASES), **args)
    for (prompt, _), decoy in zip(CASES, decoys or []):
        h.request(prompt + decoy, max_new_tokens=1)
    h.run()
    rids = [
        [h.request(prompt, max_new_tokens=NEW_TOKENS, temperature=1.0, ignore_eos=True) for _ in range(SAMPLES)]
        for prompt, _ in CASES
    ]
    h.run()
    h.assert_books_balance()
    return [[tuple(h.outputs[r]) for r in case] for case in rids], h.stats()


def decoy(outputs: list[tuple[int, ...]], ranks: tuple[int, ...]) -> list[int]:
    ranked = [[tok for tok, _ in Counter(o[i] for o in outputs).most_common()] for i in range(NEW_TOKENS)]
    return [ranked[i][rank] for i, rank in enumerate(ranks)]


def homogeneity_p_value(a: list, b: list) -> float:
    """Chi-square test that samples `a` and `b` come from one distribution (categories with an
    expected count below 5 in either sample pooled into one)."""
    ca, cb = Counter(a), Counter(b)
    total_a, total_b = len(a), len(b)
    share_a = total_a / (total_a + total_b)
    big = [x for x in ca.keys() | cb.keys() if min(share_a, 1 - share_a) * (ca[x] + cb[x]) >= 5]
    rows = [(ca[x], cb[x]) for x in big]
    rest = (total_a - sum(r[0] for r in rows), total_b - sum(r[1] for r in rows))
    if sum(rest):
        rows.append(rest)
    stat = 0.0
    for na, nb in rows:
        n = na + nb
        for observed, expected in ((na, n * share_a), (nb, n * (1 - share_a))):
            stat += (observed - expected) ** 2 / expected
    dof = len(rows) - 1
    if dof < 1:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2)))


def test_sampled_token_frequencies_match_sampling_without_speculation(peaked_model_dir):
    off, _ = sample(peaked_model_dir)
    decoys = [decoy(outputs, ranks) for outputs, (_, ranks) in zip(off, CASES)]
    on, stats = sample(peaked_model_dir, decoys, speculative="ngram")
    # most requests drafted from the decoys (those whose first token was the decoy's), and drafts were
    # both accepted and rejected often enough for the test to see either rule go wrong
    assert stats["spec_verify_steps"] >= SAMPLES * len(CASES) / 2
    assert 50 <= stats["spec_accepted_tokens"] <= stats["spec_draft_tokens"] - 50
    tests = []
    for case_off, case_on in zip(off, on):
        tests += [([o[i] for o in case_off], [o[i] for o in case_on]) for i in range(NEW_TOKENS)]
        tests.append((case_off, case_on))
    p_values = [homogeneity_p_value(a, b) for a, b in tests]
    assert min(p_values) > FALSE_ALARM / len(tests), p_values


def test_the_homogeneity_test_sees_a_shifted_distribution():
    # at SAMPLES per side, a token 15 points more frequent is told apart
    base = [0] * 50 + [1] * 30 + [2] * 20
    shifted = [0] * 65 + [1] * 23 + [2] * 12
    assert homogeneity_p_value(base * 4, shifted * 4) < FALSE_ALARM / 10
    assert homogeneity_p_value(base * 4, base * 4) == pytest.approx(1.0)


def test_seeded_sampling_draws_the_same_tokens_with_speculation_on_and_off(tiny_model_dir, monkeypatch):
    # rows priced as cheap as on an idle GPU: every request drafts its full length, past where the
    # decoys leave its output, so drafts are rejected as well as accepted whatever this CPU measures
    monkeypatch.setattr(StepCost, "row_cost", lambda self, batch_rows: 0.1)
    requests = [
        {"ids": p, "max_new_tokens": 24, "temperature": 0.8, "top_p": 0.9, "seed": 100 + i}
        for i, p in enumerate(mixed_prompts(seed=8))
    ]
    off = run_rounds(Harness(tiny_model_dir, batch_invariant="on"), requests)
    h = Harness(tiny_model_dir, batch_invariant="on", speculative="ngram")
    assert run_rounds(h, requests) == off
    assert 0 < h.stats()["spec_accepted_tokens"] < h.stats()["spec_draft_tokens"]
