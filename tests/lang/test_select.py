from __future__ import annotations

import math

import pytest

import radixrt.lang as rl
from radixrt.errors import InvalidRequest
from radixrt.lang.choices import greedy_token_selection, token_length_normalized
from radixrt.runtime import protocol as p


@rl.function
def pick(s, method="token_length_normalized"):
    s += "Is it? " + rl.select("ans", choices=["yes", "no", "maybe"], choices_method=method) + "."


def test_select_sends_one_score_request_and_picks_the_best_mean_logprob(server, backend):
    server.scores = {"yes": [-2.0, -0.1, -0.1], "no": [-0.5, -0.5], "maybe": [-3.0] * 5}
    state = pick.run(backend=backend)
    (req,) = server.of_type(p.ScoreRequest)
    assert (req.prefix, req.continuations) == ("Is it? ", ["yes", "no", "maybe"])
    assert not server.of_type(p.GenerateRequest)
    assert state["ans"] == "no" and state.text() == "Is it? no."
    meta = state.get_meta_info("ans")
    assert meta["choices_method"] == "token_length_normalized"
    assert meta["scores"] == pytest.approx([-2.2 / 3, -0.5, -3.0])
    assert meta["token_logprobs"][1] == [-0.5, -0.5]
    assert meta["prompt_tokens"] == [10, 9, 12]


def test_greedy_follows_the_best_first_token(server, backend):
    # "yes" has the best first token but a terrible tail: greedy keeps it, the mean does not
    server.scores = {"yes": [-0.1, -9.0, -9.0], "no": [-0.2, -0.2], "maybe": [-3.0] * 5}
    assert pick.run(method="greedy", backend=backend)["ans"] == "yes"
    assert pick.run(backend=backend)["ans"] == "no"


def test_unconditional_normalization_scores_the_choices_without_the_prompt(server, backend):
    server.scores = {"yes": [-1.0] * 3, "no": [-0.9] * 2, "maybe": [-1.0] * 5}
    server.unconditional_scores = {"yes": [-3.0] * 3, "no": [-1.0] * 2, "maybe": [-1.0] * 5}
    state = pick.run(method=rl.unconditional_likelihood_normalized, backend=backend)
    assert [r.prefix for r in server.of_type(p.ScoreRequest)] == ["Is it? ", ""]
    assert state["ans"] == "yes"
    assert state.get_meta_info("ans")["scores"] == pytest.approx([2.0, 0.1, 0.0])


def test_select_with_temperature_samples_one_of_the_choices(server, backend):
    @rl.function
    def prog(s):
        s += rl.select("c", choices=["a", "b"], temperature=1.0)

    assert {prog.run(backend=backend)["c"] for _ in range(8)} <= {"a", "b"}


def test_choice_methods_decide_on_plain_logprobs():
    lps = [[-0.1, -5.0], [-1.0]]
    assert token_length_normalized.decide(lps).index == 1
    assert greedy_token_selection.decide(lps).index == 0
    assert token_length_normalized.decide([[], [-1.0]]).scores[0] == -math.inf


def test_select_rejects_empty_choices():
    with pytest.raises(InvalidRequest):
        rl.select("x", choices=[])
    with pytest.raises(InvalidRequest):
        rl.select("x", choices=["a"], choices_method="best")
