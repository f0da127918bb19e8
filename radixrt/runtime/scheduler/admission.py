"""Which requests get tokens this step, and how many.

Running requests go first (oldest first): one token for decode (plus its draft tokens, when
speculating and slots are free without retracting anyone), a chunk for an unfinished prefill. When
decode cannot get a slot even after eviction, the newest running request is retracted. Then waiting requests are admitted in policy order while the token budget, free
rows and KV memory (free + evictable, minus what running requests still need) allow.
"""

from __future__ import annotations

from collections.abc import Callable

from radixrt.runtime.config import ServerArgs
from radixrt.runtime.scheduler.cache_manager import CacheManager
from radixrt.runtime.scheduler.policy import order_waiting
from radixrt.runtime.scheduler.req import Req
from radixrt.runtime.scheduler.speculative import Drafter

DECODE_RESERVE_CLIP = 256  # decode tokens reserved per request at most (retraction covers the rest)
IN_BATCH_SHARE_MIN = 4  # defer a request sharing this many uncached tokens with one admitted this step
# NOTE: fork siblings share ~5-15 uncached tokens (chat-role markers, a common instruction); at 32
# each sibling recomputed them: tree_of_thought hit 87% of its prompts where 92% was possible, and
# deferring them one step made it 1.2x faster (programs/s), tip_suggestion and llm_judge no slower.
LPM_MAX_WAITING = 256  # prefix-aware ordering up to this queue length

Plan = list[tuple[Req, int]]


class Admission:
    """`drafter`, when speculating, proposes draft tokens for decoding requests."""

    def __init__(self, args: ServerArgs, cache: CacheManager, drafter: Drafter | None = None):
        self.args = args
        self.cache = cache
        self.drafter = drafter

    def schedule(self, running: list[Req], waiting: list[Req], retract: Callable[[Req], None]) -> Plan:
        """[(req, tokens this step)]; a request with `req.draft` computes 1 + len(draft) tokens."""
        budget = self.args.chunked_prefill_size
        plan: Plan = []
        if self.drafter is not None:
            self.drafter.begin_step(len(running))
        for req in sorted(running, key=lambda r: r.arrival):
            if budget <= 0:
                break
            n = min(req.pending, budget)
            if n <= 0 or req.finished:
                continue
            req.draft = self._draft(req, n, budget)
            if not req.draft and not self._grow(req, n, running, plan, retract):
                continue
            plan.append((req, n + len(req.draft)))
            budget -= n + len(req.draft)
        if budget > 0 and waiting:
            plan += self._admit(running, waiting, budget, plan)
        return plan

    def _draft(self, req: Req, n: int, budget: int) -> list[int]:
        """Draft tokens for a request decoding one token, with slots for it and them allocated;
        none when there are no slots for them without retracting another request."""
        # NOTE: only after a sampled token: a prompt's last token (a chunk's end) is a prefill row
        if self.drafter is None or n != 1 or req.pending != 1 or req.computed < req.prompt_len:
            return []
        draft = self.drafter.propose(req, budget - 1)
        if draft:
            slots = self.cache.alloc(1 + len(draft))  # evicts cached leaves if it must, retracts no one
            if slots is None:
                return []
            self.cache.append(req, slots)
        return draft

    def _grow(self, req: Req, n: int, running: list[Req], plan: Plan, retract: Callable[[Req], None]) -> bool:
        slots = self.cache.alloc(n)
        while slots is None:
            planned = {id(r) for r, _ in plan}
            victims = [r for r in running if id(r) not in planned and r is not req]
            if not victims:
                return False
            retract(max(victims, key=lambda r: r.arrival))
            slots = self.cache.alloc(n)
        self.cache.append(req, slots)
        return True

    def _admit(self, running: list[Req], waiting: list[Req], budget: int, plan: Plan) -> Plan:
        planned = {id(r): n for r, n in plan}
        ratio = self.args.decode_reserve_ratio
        reserved = sum(
            max(r.pending - planned.get(id(r), 0), 0) + r.decode_reserve(DECODE_RESERVE_CLIP, ratio) for r in running
        )
        # NOTE: a lookup of every waiting request each step costs a tree walk each; past
        # LPM_MAX_WAITING the order falls back to arrival (in-batch sharing still applies).
        policy = self.args.schedule_policy if len(waiting) <= LPM_MAX_WAITING else "fcfs"
        cached = {id(r): self.cache.prefix_len(r) for r in waiting} if policy != "fcfs" else {}
        order = order_waiting(
            policy, waiting, lambda r: cached[id(r)], self.cache.prefix_path, self.args.max_wait_passes
        )
        admitted: Plan = []
        for req in order:
            if budget <= 0 or len(running) >= self.args.max_running_requests or not self.cache.table.num_free:
                break
            if req.grammar_future is not None:
                continue  # still compiling
            # NOTE: peek again: requests admitted before this one may have locked or evicted nodes
            # (and under fcfs nothing was looked up before: copies of a cached prompt are no sharers).
            prefix = self.cache.peek(req)
            if self._shares_with_batch(req, admitted, prefix.length):
                continue  # next step it hits the cache instead of computing the same prefix twice
            uncached = req.known - prefix.length
            need = uncached + req.decode_reserve(DECODE_RESERVE_CLIP, ratio)
            if self.cache.available_after_borrow(prefix) - reserved < need:
                break
            n = min(uncached, budget)
            self.cache.admit(req, n)
            waiting.remove(req)
            running.append(req)
            admitted.append((req, n))
            budget -= n
            reserved += need - n
        for req in waiting:
            req.wait_passes += 1
        return admitted

    def _shares_with_batch(self, req: Req, admitted: Plan, cached: int) -> bool:
        """Whether req shares IN_BATCH_SHARE_MIN uncached tokens with a request admitted this step."""
        if self.cache.disabled or req.wait_passes >= self.args.max_wait_passes:
            return False
        k = cached + IN_BATCH_SHARE_MIN
        if req.max_reusable_prefix < k:
            return False
        head = req.fill_ids(0, k)
        # NOTE: same salt only: another tenant's request would not share the cache, and deferring
        # for it would let one tenant time another's prompts
        return any(other.salt == req.salt and other.fill_ids(0, k) == head for other, _ in admitted)
