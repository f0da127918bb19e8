"""Speculative decoding without a draft model: draft tokens from what the runtime already holds.

For a decoding request, its last n tokens (n = MAX_N .. 1) are looked up in
  (a) its own prompt and output (`OwnNgrams`), and
  (b) the radix tree's cached sequences, every earlier request of any program
      (`radix_cache/ngram_index.py`, read-only),
and up to k tokens that followed them there are proposed. Ranking: the longest matched suffix wins
(more context, more often right); at equal length the request's own tokens win over the tree's
(its own document and scaffolding are the most specific context); within a source the most recent
occurrence wins (agent loops repeat what they did last). The tree is only asked for n >= 2: what
followed one token in some other request is rarely what follows it here.

Verification runs the sampled token and the k drafts as k+1 decode rows of one forward
(forward_step.py); `accepted_len` is the acceptance rule; draft_policy.py decides how many tokens a
request drafts, if any. A constrained request's draft is cut where its grammar rejects a token, ends,
or forces text (jump-forward writes forced runs, as without speculation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from radixrt.radix_cache.ngram_index import NgramIndex
from radixrt.runtime.scheduler.draft_policy import Acceptance, StepCost

if TYPE_CHECKING:
    from radixrt.runtime.scheduler.cache_manager import CacheManager
    from radixrt.runtime.scheduler.req import Req

MAX_N = 4  # longest suffix looked up
TREE_MIN_N = 2


def new_ngram_index(kv_slots: int) -> NgramIndex:
    """The tree's index: room for the n-grams of every token the tree can hold."""
    return NgramIndex(MAX_N, capacity=MAX_N * kv_slots, min_n=TREE_MIN_N)


class OwnNgrams:
    """A request's own n-grams -> where each last ended (its most recent occurrence), indexed
    incrementally: the n-grams ending before the last known token are entries, the ones ending at
    it are what is looked up."""

    def __init__(self, max_n: int = MAX_N):
        self.max_n = max_n
        self.where: dict[tuple[int, ...], int] = {}
        self.indexed = 0  # n-grams ending before this position are entries

    def continuation(self, req: Req, tail: list[int], k: int) -> tuple[list[int], int]:
        """Up to `k` tokens after the latest earlier occurrence of the longest suffix of `tail`, and
        that suffix's length; ([], 0) when none."""
        self._catch_up(req)
        for n in range(min(self.max_n, len(tail)), 0, -1):
            end = self.where.get(tuple(tail[len(tail) - n :]))
            if end is not None and end + 1 < req.known:
                return req.fill_ids(end + 1, min(end + 1 + k, req.known)), n
        return [], 0

    def _catch_up(self, req: Req) -> None:
        last = req.known - 1
        # NOTE: jump-forward may drop output tokens; what ends past them is indexed again
        self.indexed = min(self.indexed, last)
        if self.indexed >= last:
            return
        low = max(self.indexed - self.max_n + 1, 0)
        ids = req.fill_ids(low, last)
        where, max_n = self.where, self.max_n
        for end in range(self.indexed, last):
            i = end - low
            for n in range(1, min(max_n, end + 1) + 1):
                where[tuple(ids[i - n + 1 : i + 1])] = end
        self.indexed = last


@dataclass
class DraftState:
    """A request's speculation: its own n-grams, its acceptance estimate, what it drafted and got."""

    own: OwnNgrams = field(default_factory=OwnNgrams)
    acceptance: Acceptance = field(default_factory=Acceptance)
    drafted: int = 0
    accepted: int = 0
    verifications: int = 0


def accepted_len(draft: list[int], sampled: list[int]) -> int:
    """Draft tokens accepted: the longest prefix of `draft` equal to the tokens sampled at its rows.

    `sampled[j]` is the token the request's sampler picks at row j (after the sampled token and
    draft[:j]), with the noise the same step would use without speculation. Greedy: the argmax.
    Sampling: a draft here is one token with probability 1, for which the standard rejection rule
    (accept with probability p(d), else draw from p without d, renormalised) is exactly "draw x from
    p, accept when x == d, else emit x"; so the output distribution is the model's, and a seeded
    request draws the same tokens as without speculation where its logits are the same bits.
    """
    m = 0
    while m < len(draft) and sampled[m] == draft[m]:
        m += 1
    return m


class Drafter:
    """Proposes drafts for decoding requests and keeps the speculation counters (see module docstring)."""

    def __init__(self, cache: CacheManager, max_tokens: int, context_length: int, jump_forward: bool = True):
        self.cache = cache
        self.max_tokens = max_tokens
        self.context_length = context_length
        self.jump_forward = jump_forward
        self.cost = StepCost()
        self.row_cost = self.cost.row_cost(1)
        self.drafted = self.accepted = self.verifications = 0

    def begin_step(self, batch_rows: int) -> None:
        """The cost of a row this step, with `batch_rows` requests decoding."""
        self.row_cost = self.cost.row_cost(batch_rows)

    def propose(self, req: Req, room: int) -> list[int]:
        """Draft tokens for `req` (it decodes one token this step), at most `room`."""
        if req.spec is None:
            req.spec = DraftState()
        limit = min(
            room,
            req.sampling.max_new_tokens - len(req.output_ids) - 1,  # the token after the drafts counts too
            self.context_length - req.known,
        )
        if limit <= 0:
            return []
        k = min(req.spec.acceptance.draft_len(self.max_tokens, self.row_cost), limit)
        if k <= 0:
            return []
        draft = self.lookup(req, k)
        if draft and req.matcher is not None:
            draft = self._grammar_cut(req.matcher, draft)
        return draft

    def lookup(self, req: Req, k: int) -> list[int]:
        """Up to `k` tokens that followed req's longest matched suffix (ranking: module docstring)."""
        tail = req.fill_ids(max(req.known - MAX_N, 0), req.known)
        own, n_own = req.spec.own.continuation(req, tail, k)
        if n_own == len(tail):
            return own
        tree, _ = self.cache.continuation(tail, k, max(n_own + 1, TREE_MIN_N), req.salt)
        return tree or own

    def _grammar_cut(self, matcher: Any, draft: list[int]) -> list[int]:
        """The draft up to the first token the grammar rejects, or through the first that ends it or
        after which it forces text (the matcher is left as it was)."""
        kept = 0
        for tok in draft:
            if not matcher.accept_token(tok):
                break
            kept += 1
            if matcher.is_terminated() or (self.jump_forward and matcher.jump_forward() is not None):
                break
        matcher.rollback(kept)
        return draft[:kept]

    def verified(self, req: Req, drafted: int, accepted: int) -> None:
        spec = req.spec
        spec.drafted += drafted
        spec.accepted += accepted
        spec.verifications += 1
        spec.acceptance.record(drafted, accepted, self.row_cost)
        self.drafted += drafted
        self.accepted += accepted
        self.verifications += 1

    def observe_step(self, rows: int, seconds: float) -> None:
        """A decode-only step (verification rows included) of `rows` rows took `seconds`."""
        self.cost.observe(rows, seconds)

    def stats(self) -> dict[str, Any]:
        return {
            "spec_draft_tokens": self.drafted,
            "spec_accepted_tokens": self.accepted,
            "spec_verify_steps": self.verifications,
            "spec_row_cost": round(self.row_cost, 4),
        }


def meta_info(req: Req) -> dict[str, int]:
    """What a request reports of its speculation (in meta_info), empty when it drafted nothing."""
    spec = req.spec
    if spec is None or not spec.drafted:
        return {}
    return {
        "spec_draft_tokens": spec.drafted,
        "spec_accepted_tokens": spec.accepted,
        "spec_verify_ct": spec.verifications,
    }
