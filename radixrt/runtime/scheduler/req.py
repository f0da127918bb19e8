"""A request inside the worker: a few counters with derived properties.

The one scheduling rule: a request knows `known` tokens (prompt + output) and has the KV of
`computed` of them in the pool; each step gives it tokens under a budget until computed
catches up with known. Prefill, chunked prefill, prefix hits, decode and jump-forward are
all that one case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from radixrt.runtime.protocol import SamplingParams, TokenizedRequest

if TYPE_CHECKING:
    from concurrent.futures import Future

    from radixrt.constrained.grammar import CompiledGrammar
    from radixrt.constrained.matcher import GrammarMatcher
    from radixrt.radix_cache.tree import TreeNode
    from radixrt.runtime.scheduler.speculative import DraftState

TopLogprobs = list[tuple[float, int]]  # (logprob, token id), best first


@dataclass
class Logprobs:
    """What a request asked to be scored (it set return_logprob) and the scores so far."""

    start_len: int = -1  # first prompt position to score; -1: no prompt logprobs
    top_n: int = 0  # alternatives reported per position
    output: list[float] = field(default_factory=list)
    output_top: list[TopLogprobs] = field(default_factory=list)
    prompt: list[float | None] = field(default_factory=list)  # None: the first prompt token
    prompt_top: list[TopLogprobs] = field(default_factory=list)
    prompt_sent: bool = False

    @property
    def wants_prompt(self) -> bool:
        return self.start_len >= 0


@dataclass
class Req:
    rid: str
    input_ids: list[int]
    sampling: SamplingParams
    arrival: int
    logprobs: Logprobs | None = None  # None unless the request asked for logprobs
    stream: bool = False
    salt: str = ""  # the cache namespace (tenant) this request reads and writes
    pin_s: float = 0.0  # > 0: pin the prompt in the cache this long once the request finishes
    pin_report: dict[str, Any] | None = None  # what the pin got (meta_info "pin")
    output_ids: list[int] = field(default_factory=list)
    computed: int = 0  # leading tokens of fill_ids whose KV this request holds
    prefix_len: int = 0  # leading tokens borrowed (locked) from the radix tree
    last_node: TreeNode | None = None  # tree node locked for the borrowed prefix
    row: int | None = None  # ReqToToken row while running
    cached_tokens: int = -1  # prompt tokens reused from the cache at first admission
    wait_passes: int = 0  # scheduling passes spent waiting (LPM aging)
    finish_reason: dict[str, Any] | None = None
    sent: int = 0  # output ids already sent to the frontend
    matcher: GrammarMatcher | None = None  # grammar cursor, when constrained
    grammar_future: Future[CompiledGrammar] | None = None  # the compile, until the matcher exists
    jump_forward_tokens: int = 0
    draft: list[int] = field(default_factory=list)  # draft tokens verified in this step (slots allocated)
    spec: DraftState | None = None  # speculative decoding: own n-grams, acceptance, counts

    def __post_init__(self) -> None:
        assert self.input_ids, "a request needs at least one prompt token"

    @classmethod
    def from_msg(cls, msg: TokenizedRequest, arrival: int) -> Req:
        return cls(
            rid=msg.rid,
            input_ids=list(msg.input_ids),
            sampling=msg.sampling,
            arrival=arrival,
            logprobs=Logprobs(msg.logprob_start_len, msg.top_logprobs_num) if msg.return_logprob else None,
            stream=msg.stream,
            salt=msg.cache_salt,
            pin_s=msg.pin_s,
        )

    @property
    def prompt_len(self) -> int:
        return len(self.input_ids)

    @property
    def known(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

    @property
    def pending(self) -> int:
        """Known tokens whose KV is not computed yet."""
        return self.known - self.computed

    @property
    def private_slots(self) -> int:
        """Slots this request holds that no tree node holds."""
        return self.computed - self.prefix_len

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def top_logprobs_num(self) -> int:
        return self.logprobs.top_n if self.logprobs is not None else 0

    @property
    def max_reusable_prefix(self) -> int:
        """How many leading tokens may come from the cache: the last known token is always
        recomputed (its logits are needed), and prompt logprobs need their rows computed."""
        cap = self.known - 1
        if self.logprobs is not None and self.logprobs.wants_prompt:
            cap = min(cap, max(self.logprobs.start_len - 1, 0))
        return cap

    def fill_ids(self, start: int = 0, end: int | None = None) -> list[int]:
        """Slice of prompt + output without building the whole concatenation."""
        end = self.known if end is None else end
        n = self.prompt_len
        if end <= n:
            return self.input_ids[start:end]
        if start >= n:
            return self.output_ids[start - n : end - n]
        return self.input_ids[start:] + self.output_ids[: end - n]

    def decode_reserve(self, clip: int, ratio: float) -> int:
        """Slots to reserve for this request's remaining decode: `ratio` of what it may still
        generate, capped at `clip` (retraction covers an underestimate)."""
        remaining = max(0, min(self.sampling.max_new_tokens, clip) - len(self.output_ids))
        return math.ceil(remaining * ratio)
