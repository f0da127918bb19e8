"""How `select` turns per-token logprobs of each choice into one decision."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from radixrt.errors import InvalidRequest


@dataclass(frozen=True)
class ChoiceDecision:
    index: int
    scores: list[float]  # one per choice; higher is better


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else -math.inf


class ChoicesMethod:
    """Base class. `needs_unconditional`: also score the choices without the prompt."""

    name = "base"
    needs_unconditional = False

    def scores(self, logprobs: list[list[float]], unconditional: list[list[float]] | None) -> list[float]:
        raise NotImplementedError

    def decide(
        self,
        logprobs: list[list[float]],
        unconditional: list[list[float]] | None = None,
        temperature: float = 0.0,
        rng: random.Random | None = None,
    ) -> ChoiceDecision:
        """Argmax of the scores, or a sample from softmax(scores / temperature) when > 0."""
        scores = self.scores(logprobs, unconditional)
        if temperature <= 0.0:
            return ChoiceDecision(max(range(len(scores)), key=scores.__getitem__), scores)
        top = max(scores)
        weights = [math.exp((s - top) / temperature) for s in scores]
        index = (rng or random).choices(range(len(scores)), weights=weights)[0]
        return ChoiceDecision(index, scores)

    def __repr__(self) -> str:
        return self.name


class TokenLengthNormalized(ChoicesMethod):
    """Mean logprob per token: long choices are not penalized for their length (the default)."""

    name = "token_length_normalized"

    def scores(self, logprobs, unconditional):
        return [_mean(lps) for lps in logprobs]


class GreedyTokenSelection(ChoicesMethod):
    """The choice greedy decoding would follow: compare token by token, keep the best so far.

    A choice that has run out of tokens competes with its mean logprob (SGLang's rule).
    """

    name = "greedy"

    def scores(self, logprobs, unconditional):
        remaining = list(range(len(logprobs)))
        for pos in range(max(len(lps) for lps in logprobs)):
            column = {i: logprobs[i][pos] if pos < len(logprobs[i]) else _mean(logprobs[i]) for i in remaining}
            best = max(column.values())
            remaining = [i for i in remaining if column[i] == best]
            if len(remaining) == 1:
                break
        return [0.0 if i == remaining[0] else -math.inf for i in range(len(logprobs))]

    def decide(self, logprobs, unconditional=None, temperature=0.0, rng=None):
        return super().decide(logprobs, unconditional, 0.0, rng)


class UnconditionalLikelihoodNormalized(ChoicesMethod):
    """Mean logprob given the prompt minus mean logprob without it: favours choices the prompt
    makes more likely, not those that are likely anyway."""

    name = "unconditional_likelihood_normalized"
    needs_unconditional = True

    def scores(self, logprobs, unconditional):
        if unconditional is None:
            raise ValueError("unconditional_likelihood_normalized needs unconditional logprobs")
        return [_mean(c) - _mean(u) for c, u in zip(logprobs, unconditional)]


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()

_BY_NAME = {m.name: m for m in (token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized)}
_BY_NAME["greedy_token_selection"] = greedy_token_selection


def resolve(method: ChoicesMethod | str | None) -> ChoicesMethod:
    """A method object from an object, one of the names, or None (the default)."""
    if method is None:
        return token_length_normalized
    if isinstance(method, ChoicesMethod):
        return method
    if method in _BY_NAME:
        return _BY_NAME[method]
    raise InvalidRequest(f"unknown choices_method {method!r}; one of {sorted(_BY_NAME)}", "choices_method")
