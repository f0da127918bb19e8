"""One model step for a scheduled batch: build the ForwardBatch, run it, sample, score.

plan = [(req, n_new_tokens), ...]   ->   per request: sampled token (when its computed
                                         catches up with known), logprobs, prompt logprobs

A request with draft tokens (speculative decoding) runs its sampled token and the drafts as decode
rows, each scored as the decode step of that token would be; every row is sampled, the drafts the
sampler agrees with are accepted (speculative.accepted_len) and the KV of the rest is freed at once:

    new tokens:  t   d1  d2  d3        sampled at their rows: d1  d2  x   y
    accepted:        d1  d2            emitted: d1 d2 x (x: the sampler's token where d3 was drafted)
    KV kept:     t   d1  d2            d3's slot freed; x is computed next step, like any sampled token
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from radixrt.runtime.scheduler.cache_manager import CacheManager
from radixrt.runtime.scheduler.req import Req, TopLogprobs
from radixrt.runtime.scheduler.speculative import Drafter, accepted_len
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers.sampler import Sampler, token_logprobs


@dataclass
class StepResult:
    req: Req
    next_ids: list[int] = field(default_factory=list)  # empty: still prefilling, or prefill-only
    logprobs: list[float | None] = field(default_factory=list)  # one per next id
    top_logprobs: list[TopLogprobs | None] = field(default_factory=list)


class ForwardStep:
    def __init__(
        self,
        runner,
        cache: CacheManager,
        sampler: Sampler,
        eos_ids: list[int],
        grammar_masks,
        batch_invariant: str = "auto",
        drafter: Drafter | None = None,
    ):
        self.runner = runner
        self.cache = cache
        self.sampler = sampler
        self.eos_ids = eos_ids
        # callable([(req, j)], logits) masking each row in place: row i scores the token after req's
        # output and its first j draft tokens
        self.grammar_masks = grammar_masks
        self.batch_invariant = batch_invariant  # auto (batches with a greedy request) | on | off
        self.drafter = drafter
        self.forward_tokens = 0
        self.busy_s = 0.0  # time in model steps (forward, scoring, sampling)

    def run(self, plan: list[tuple[Req, int]]) -> list[StepResult]:
        start = time.perf_counter()
        decode_rows = sum(n for _, n in plan) if all(self._decodes(req, n) for req, n in plan) else 0
        try:
            return self._run(plan)
        finally:
            elapsed = time.perf_counter() - start
            self.busy_s += elapsed
            if self.drafter is not None and decode_rows:
                self.drafter.observe_step(decode_rows, elapsed)

    @staticmethod
    def _decodes(req: Req, n: int) -> bool:
        """Whether req's n new tokens are decode rows: the token it sampled, and its drafts."""
        return n - len(req.draft) == 1 and req.computed >= req.prompt_len

    def _run(self, plan: list[tuple[Req, int]]) -> list[StepResult]:
        rows, sample_rows, prompt_rows = self._rows(plan)
        new_ids = [req.fill_ids(req.computed, req.computed + n - len(req.draft)) + req.draft for req, n in plan]
        prefill = [not self._decodes(req, n) for req, n in plan]
        if self.runner.device.type == "cuda":  # one host-to-device copy, slots gathered on the device
            seq_lens = [req.computed + n for req, n in plan]
            batch = ForwardBatch.from_table(new_ids, self.cache.table.table, [req.row for req, _ in plan], seq_lens,
                                            rows, prefill, self._invariant(plan))  # fmt: skip
        else:  # measured on the CPU: slicing request by request is faster up to 64 requests of 2,000 tokens
            batch = ForwardBatch.build(
                new_ids=new_ids,
                seq_slots=[self.cache.seq_slots(req, req.computed + n) for req, n in plan],
                logit_rows=rows,
                device=self.runner.device,
                prefill=prefill,
                invariant=self._invariant(plan),
            )
        logits = self.runner.forward(batch, self.cache.pool)  # [R, vocab] float32
        self.forward_tokens += batch.num_tokens
        results = self._sample(plan, logits, sample_rows)
        for (req, n), off in zip(plan, _offsets(rows)):
            self._score_prompt(req, n, logits, off, prompt_rows)
        # NOTE: nothing in the cache's books changes before this point, so a step that raised can
        # hand back its slots (CacheManager.abandon)
        for req, n in plan:
            req.computed += n
        for res in results:
            if res.req.draft:
                self._settle(res)
        return results

    def _invariant(self, plan: list[tuple[Req, int]]) -> bool:
        if self.batch_invariant == "auto":
            return any(req.sampling.is_greedy for req, _ in plan)
        return self.batch_invariant == "on"

    def _rows(self, plan: list[tuple[Req, int]]):
        """Which logits rows each request needs: prompt-logprob rows, then the sampling rows (the
        last new token, it may double as the last prompt-logprob row; or the sampled token and the
        drafts)."""
        rows, sample_rows, prompt_rows, acc = [], {}, {}, 0
        for req, n in plan:
            r = list(range(*_prompt_logit_range(req, n)))
            prompt_rows[req.rid] = len(r)
            d = len(req.draft)
            if req.computed + n - d == req.known and req.sampling.max_new_tokens > 0 and not req.finished:
                first = len(r) - (1 if r and r[-1] == n - d - 1 else 0)
                r = r[:first] + list(range(n - d - 1, n))
                sample_rows[req.rid] = list(range(acc + first, acc + len(r)))
            rows.append(r)
            acc += len(r)
        return rows, sample_rows, prompt_rows

    def _score_prompt(self, req: Req, n: int, logits: torch.Tensor, off: int, prompt_rows: dict) -> None:
        scores = req.logprobs
        if scores is None:
            return
        if scores.start_len == 0 and not scores.prompt:
            scores.prompt.append(None)  # the first prompt token has no logprob
            scores.prompt_top.append([])
        count = prompt_rows[req.rid]
        if not count:
            return
        lo, _ = _prompt_logit_range(req, n)
        start = req.computed + lo  # position of the first row; it scores token start + 1
        targets = torch.tensor(req.input_ids[start + 1 : start + 1 + count], device=logits.device)
        part = logits[off : off + count]
        scores.prompt.extend(token_logprobs(part, targets).tolist())
        if scores.top_n:
            vals, ids = torch.log_softmax(part, dim=-1).topk(scores.top_n, dim=-1)
            scores.prompt_top.extend(_pairs(vals, ids))

    @torch.inference_mode()  # the masks write into the model's logits, an inference tensor
    def _sample(self, plan, logits, sample_rows: dict[str, list[int]]) -> list[StepResult]:
        results = {req.rid: StepResult(req) for req, _ in plan}
        # (req, j): the row scoring the token after req's output and draft[:j]
        to_sample = [(req, j) for req, _ in plan for j in range(len(sample_rows.get(req.rid, ())))]
        if not to_sample:
            return list(results.values())
        row_ids = [row for req, _ in plan for row in sample_rows.get(req.rid, ())]
        if row_ids == list(range(logits.shape[0])):
            rows = logits  # a decode batch: every row is sampled (the masks below may write it)
        else:
            rows = logits[torch.tensor(row_ids, device=logits.device)]
        self._mask_min_tokens(to_sample, rows)
        self.grammar_masks(to_sample, rows)
        sb = self.sampler.make_batch([r.sampling for r, _ in to_sample], rows.device)
        out = self.sampler.sample(
            rows,
            sb,
            output_ids=[r.output_ids + r.draft[:j] if j else r.output_ids for r, j in to_sample],
            prompt_ids=[r.input_ids for r, _ in to_sample],
            steps=[len(r.output_ids) + j for r, j in to_sample],
            top_logprobs_num=max(r.top_logprobs_num for r, _ in to_sample),
            with_logprobs=any(r.logprobs is not None for r, _ in to_sample),
        )
        next_ids = out.next_ids.tolist()
        lps = out.logprobs.tolist() if out.logprobs is not None else [None] * len(to_sample)
        tops = _pairs(*out.top_logprobs) if out.top_logprobs is not None else None
        first = 0
        for req, _ in plan:
            count = len(sample_rows.get(req.rid, ()))
            if count:
                self._emit(results[req.rid], next_ids, lps, tops, first, count)
            first += count
        return list(results.values())

    def _emit(self, res: StepResult, next_ids: list[int], lps: list, tops: list | None, first: int, count: int) -> None:
        """Fill req's result from its `count` sampled rows starting at `first`: the one token, or
        the accepted drafts and the token after them."""
        req = res.req
        emitted = 1 + accepted_len(req.draft, next_ids[first : first + count])
        res.next_ids = next_ids[first : first + emitted]
        res.logprobs = lps[first : first + emitted]
        if tops is not None and req.top_logprobs_num:
            res.top_logprobs = [top[: req.top_logprobs_num] for top in tops[first : first + emitted]]

    def _settle(self, res: StepResult) -> None:
        """A verification's books: the rejected drafts' KV freed now, the acceptance recorded."""
        req, emitted = res.req, len(res.next_ids)
        self.cache.uncompute(req, len(req.draft) + 1 - emitted)
        self.drafter.verified(req, len(req.draft), emitted - 1)

    def _mask_min_tokens(self, rows_of: list[tuple[Req, int]], rows: torch.Tensor) -> None:
        for i, (req, j) in enumerate(rows_of):
            if len(req.output_ids) + j < req.sampling.min_new_tokens:
                banned = list(req.sampling.stop_token_ids) + ([] if req.sampling.ignore_eos else self.eos_ids)
                if banned:
                    rows[i, torch.tensor(banned, device=rows.device)] = float("-inf")


def _prompt_logit_range(req: Req, n: int) -> tuple[int, int]:
    """Rows [lo, hi) of req's n new tokens whose logits score prompt tokens.

    Row j is position computed + j; it scores token computed + j + 1, wanted when that token
    is a prompt token at or after the logprobs' start_len (and at position >= 1).
    """
    if req.logprobs is None or not req.logprobs.wants_prompt:
        return 0, 0
    first_pos = max(req.logprobs.start_len, 1) - 1  # position whose logits score the first wanted token
    last_pos = req.prompt_len - 2  # position whose logits score the last prompt token
    lo = max(first_pos - req.computed, 0)
    hi = min(last_pos - req.computed + 1, n)
    return (lo, hi) if hi > lo else (0, 0)


def _offsets(rows: list[list[int]]) -> list[int]:
    out, acc = [], 0
    for r in rows:
        out.append(acc)
        acc += len(r)
    return out


def _pairs(vals: torch.Tensor, ids: torch.Tensor) -> list[list[tuple[float, int]]]:
    return [list(zip(v, i)) for v, i in zip(vals.tolist(), ids.tolist())]
