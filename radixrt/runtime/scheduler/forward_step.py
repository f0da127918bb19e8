"""One model step for a scheduled batch: build the ForwardBatch, run it, sample, score.

plan = [(req, n_new_tokens), ...]   ->   per request: sampled token (when its computed
                                         catches up with known), logprobs, prompt logprobs
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from radixrt.runtime.scheduler.cache_manager import CacheManager
from radixrt.runtime.scheduler.req import Req
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers.sampler import Sampler, token_logprobs


@dataclass
class StepResult:
    req: Req
    next_id: int | None = None  # None: still prefilling, or prefill-only
    logprob: float | None = None
    top_logprobs: list[tuple[float, int]] | None = None


class ForwardStep:
    def __init__(
        self,
        runner,
        cache: CacheManager,
        sampler: Sampler,
        eos_ids: list[int],
        grammar_masks,
        batch_invariant: str = "auto",
    ):
        self.runner = runner
        self.cache = cache
        self.sampler = sampler
        self.eos_ids = eos_ids
        self.grammar_masks = grammar_masks  # callable(reqs, logits) applying grammar masks in place
        self.batch_invariant = batch_invariant  # auto (batches with a greedy request) | on | off
        self.forward_tokens = 0
        self.busy_s = 0.0  # time in model steps (forward, scoring, sampling)

    def run(self, plan: list[tuple[Req, int]]) -> list[StepResult]:
        start = time.perf_counter()
        try:
            return self._run(plan)
        finally:
            self.busy_s += time.perf_counter() - start

    def _run(self, plan: list[tuple[Req, int]]) -> list[StepResult]:
        rows, sample_rows, prompt_rows = self._rows(plan)
        batch = ForwardBatch.build(
            new_ids=[req.fill_ids(req.computed, req.computed + n) for req, n in plan],
            seq_slots=[self.cache.seq_slots(req, req.computed + n) for req, n in plan],
            logit_rows=rows,
            device=self.runner.device,
            prefill=[n > 1 or req.computed < req.prompt_len for req, n in plan],
            invariant=self._invariant(plan),
        )
        logits = self.runner.forward(batch, self.cache.pool)  # [R, vocab] float32
        self.forward_tokens += batch.num_tokens
        offsets = _offsets(rows)
        for (req, n), off in zip(plan, offsets):
            self._score_prompt(req, n, logits, off, prompt_rows)
            req.computed += n
        return self._sample(plan, logits, sample_rows)

    def _invariant(self, plan: list[tuple[Req, int]]) -> bool:
        if self.batch_invariant == "auto":
            return any(req.sampling.is_greedy for req, _ in plan)
        return self.batch_invariant == "on"

    def _rows(self, plan: list[tuple[Req, int]]):
        """Which logits rows each request needs: prompt-logprob rows, then the sampling row
        (the last new token; it may double as the last prompt-logprob row)."""
        rows, sample_rows, prompt_rows, acc = [], {}, {}, 0
        for req, n in plan:
            r = list(range(*_prompt_logit_range(req, n)))
            prompt_rows[req.rid] = len(r)
            if req.computed + n == req.known and req.sampling.max_new_tokens > 0 and not req.finished:
                if not r or r[-1] != n - 1:
                    r.append(n - 1)
                sample_rows[req.rid] = acc + len(r) - 1
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
    def _sample(self, plan, logits, sample_rows: dict[str, int]) -> list[StepResult]:
        to_sample = [(req, sample_rows[req.rid]) for req, _ in plan if req.rid in sample_rows]
        results = {req.rid: StepResult(req) for req, _ in plan}
        if not to_sample:
            return list(results.values())
        reqs = [r for r, _ in to_sample]
        row_ids = [row for _, row in to_sample]
        if row_ids == list(range(logits.shape[0])):
            rows = logits  # a decode batch: every row is sampled (the masks below may write it)
        else:
            rows = logits[torch.tensor(row_ids, device=logits.device)]
        self._mask_min_tokens(reqs, rows)
        self.grammar_masks(reqs, rows)
        sb = self.sampler.make_batch([r.sampling for r in reqs], rows.device)
        top_n = max(r.top_logprobs_num for r in reqs)
        out = self.sampler.sample(
            rows,
            sb,
            output_ids=[r.output_ids for r in reqs],
            prompt_ids=[r.input_ids for r in reqs],
            steps=[len(r.output_ids) for r in reqs],
            top_logprobs_num=top_n,
            with_logprobs=any(r.logprobs is not None for r in reqs),
        )
        next_ids = out.next_ids.tolist()
        lps = out.logprobs.tolist() if out.logprobs is not None else [None] * len(reqs)
        tops = _pairs(*out.top_logprobs) if out.top_logprobs is not None else None
        for i, req in enumerate(reqs):
            res = results[req.rid]
            res.next_id, res.logprob = next_ids[i], lps[i]
            if tops is not None and req.top_logprobs_num:
                res.top_logprobs = tops[i][: req.top_logprobs_num]
        return list(results.values())

    def _mask_min_tokens(self, reqs: list[Req], rows: torch.Tensor) -> None:
        for i, req in enumerate(reqs):
            if len(req.output_ids) < req.sampling.min_new_tokens:
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
