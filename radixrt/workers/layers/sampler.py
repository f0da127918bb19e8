"""Batched, seed-reproducible sampling from next-token logits.

Per row: penalties -> temperature -> top-k -> top-p -> min-p -> sample; greedy rows take the
argmax of the penalised logits. Sampling inverts the row's CDF (float64 cumulative sum of the
softmax) at one uniform number per row, a counter-based hash of (seed_i, step_i), so a seeded
request draws the same tokens alone or in any batch, at any row. One hash per row instead of
one per (row, token), as Gumbel-max needs, keeps sampling cheap at large vocabularies.

Logprobs are the log-softmax of the logits after penalties (and after any grammar mask the caller
applied) but before temperature, top-k/top-p/min-p: they score the model's distribution, not the
sampler's. SGLang instead reports the raw logits' logprob, before penalties.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from radixrt.runtime.sampling_params import SamplingParams

# Temperatures below this are treated as greedy (dividing by them overflows float32).
MIN_TEMPERATURE = 1e-5

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64 stream increment
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def as_int64(value: int) -> int:
    """The signed int64 with the same low 64 bits as `value`."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shr_(x: torch.Tensor, bits: int, out: torch.Tensor) -> torch.Tensor:
    """Logical right shift of int64 `x` into `out`."""
    # NOTE: torch's >> on int64 is arithmetic; mask off the sign copies.
    return torch.bitwise_right_shift(x, bits, out=out).bitwise_and_((1 << (64 - bits)) - 1)


def mix64_(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer, in place on int64 bit patterns (multiplications wrap mod 2**64)."""
    tmp = torch.empty_like(x)
    x.bitwise_xor_(_shr_(x, 30, tmp)).mul_(as_int64(_MIX1))
    x.bitwise_xor_(_shr_(x, 27, tmp)).mul_(as_int64(_MIX2))
    return x.bitwise_xor_(_shr_(x, 31, tmp))


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on a copy of `x`."""
    return mix64_(x.clone())


def uniforms(keys: torch.Tensor) -> torch.Tensor:
    """One uniform float64 in (0, 1) per int64 key (the top 53 bits of its splitmix64 mix)."""
    bits = mix64(keys)
    return _shr_(bits, 11, bits).double().add_(0.5).mul_(2.0**-53)


def row_keys(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Per-row noise keys [B]: output number `step` of the splitmix64 stream seeded with `seed`."""
    return mix64(seeds + (steps + 1) * as_int64(_GOLDEN))


@dataclass
class SamplingBatch:
    """Sampling parameters of a batch as tensors [B], plus flags that let fast paths skip work."""

    temperatures: torch.Tensor  # [B] float32, 1.0 on greedy rows
    top_ps: torch.Tensor  # [B] float32
    top_ks: torch.Tensor  # [B] int64, vocab_size where off
    min_ps: torch.Tensor  # [B] float32
    frequency_penalties: torch.Tensor  # [B] float32
    presence_penalties: torch.Tensor  # [B] float32
    repetition_penalties: torch.Tensor  # [B] float32
    seeds: torch.Tensor  # [B] int64, the seed's low 64 bits
    greedy: torch.Tensor  # [B] bool
    all_greedy: bool
    need_top_p: bool
    need_top_k: bool
    need_min_p: bool
    need_penalties: bool
    max_top_k: int  # largest top-k among sampling rows that use it
    penalty_rows: list[int]  # rows with a non-neutral penalty

    @property
    def batch_size(self) -> int:
        return int(self.temperatures.shape[0])

    @classmethod
    def from_params(
        cls,
        params: Sequence[SamplingParams],
        device: torch.device | str,
        vocab_size: int,
        *,
        rng: random.Random | None = None,
    ) -> SamplingBatch:
        """Build from per-row duck-typed params (temperature, top_p, top_k, min_p, penalties, seed).

        Rows with `seed=None` get a seed from `rng` (default: a fresh OS-seeded generator).
        """
        rng = rng if rng is not None else random.Random()
        greedy = [p.temperature < MIN_TEMPERATURE or p.top_k == 1 for p in params]
        ks = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
        floats = torch.tensor(
            [
                [1.0 if g else p.temperature for p, g in zip(params, greedy)],
                [p.top_p for p in params],
                [p.min_p for p in params],
                [p.frequency_penalty for p in params],
                [p.presence_penalty for p in params],
                [p.repetition_penalty for p in params],
            ],
            dtype=torch.float32,
        ).to(device)
        temperatures, top_ps, min_ps, frequency, presence, repetition = floats.unbind(0)
        seeds = [as_int64(p.seed if p.seed is not None else rng.getrandbits(64)) for p in params]
        sampling = [i for i, g in enumerate(greedy) if not g]
        penalty_rows = [i for i, p in enumerate(params) if _has_penalty(p)]
        top_k_rows = [ks[i] for i in sampling if ks[i] < vocab_size]
        return cls(
            temperatures=temperatures,
            top_ps=top_ps,
            top_ks=torch.tensor(ks, dtype=torch.int64).to(device),
            min_ps=min_ps,
            frequency_penalties=frequency,
            presence_penalties=presence,
            repetition_penalties=repetition,
            seeds=torch.tensor(seeds, dtype=torch.int64).to(device),
            greedy=torch.tensor(greedy, dtype=torch.bool).to(device),
            all_greedy=not sampling,
            need_top_p=any(params[i].top_p < 1.0 for i in sampling),
            need_top_k=bool(top_k_rows),
            need_min_p=any(params[i].min_p > 0.0 for i in sampling),
            need_penalties=bool(penalty_rows),
            max_top_k=max(top_k_rows, default=vocab_size),
            penalty_rows=penalty_rows,
        )


def _has_penalty(p: SamplingParams) -> bool:
    return p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 or p.repetition_penalty != 1.0


class SampleOutput(NamedTuple):
    next_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None  # [B] float32, log-softmax of the penalised logits at next_ids
    top_logprobs: tuple[torch.Tensor, torch.Tensor] | None  # ([B, k] values, [B, k] ids), descending


class Sampler:
    """Samples one token per row; owns the generator that seeds unseeded requests."""

    def __init__(self, vocab_size: int, seed: int | None = None):
        self.vocab_size = vocab_size
        self.rng = random.Random(seed)

    def make_batch(self, params: Sequence[SamplingParams], device: torch.device | str) -> SamplingBatch:
        """`SamplingBatch.from_params` with this sampler's generator for unseeded rows."""
        return SamplingBatch.from_params(params, device, self.vocab_size, rng=self.rng)

    def sample(
        self,
        logits: torch.Tensor,
        sb: SamplingBatch,
        *,
        output_ids: Sequence[Sequence[int]] | None = None,
        prompt_ids: Sequence[Sequence[int]] | None = None,
        steps: Sequence[int] | torch.Tensor | None = None,
        top_logprobs_num: int = 0,
        with_logprobs: bool = True,
    ) -> SampleOutput:
        """Pick the next token of every row of `logits` [B, V].

        `output_ids[i]`: tokens row i generated so far (frequency/presence/repetition penalties);
        `prompt_ids[i]`: its prompt (repetition penalty only). `steps[i]`: tokens row i generated
        so far (default `len(output_ids[i])`, else 0); with the seed it fixes the noise.
        `with_logprobs=False` skips the log-softmax (`logprobs` is None) unless top logprobs are asked.
        """
        logits = logits.float()
        if sb.need_penalties and (output_ids is not None or prompt_ids is not None):
            logits = apply_penalties(logits, sb, output_ids, prompt_ids)
        next_ids = logits.argmax(dim=-1)
        if not sb.all_greedy:
            steps_t = self._steps_tensor(steps, output_ids, sb.batch_size, logits.device)
            sampled = self._sample_rows(logits, sb, steps_t)
            next_ids = torch.where(sb.greedy, next_ids, sampled)
        if not with_logprobs and top_logprobs_num == 0:
            return SampleOutput(next_ids, None, None)
        logp = torch.log_softmax(logits, dim=-1)  # [B, V]
        top = None
        if top_logprobs_num > 0:
            values, ids = logp.topk(min(top_logprobs_num, logp.shape[-1]), dim=-1)
            top = (values, ids)
        return SampleOutput(next_ids, logp.gather(1, next_ids[:, None]).squeeze(1), top)

    def _sample_rows(self, logits: torch.Tensor, sb: SamplingBatch, steps: torch.Tensor) -> torch.Tensor:
        z = logits / sb.temperatures[:, None]  # [B, V]
        if sb.need_top_p:
            z = top_k_top_p_filter(z, sb.top_ks, sb.top_ps)
        elif sb.need_top_k:
            z = top_k_filter(z, sb.top_ks, sb.max_top_k)
        if sb.need_min_p:
            z = min_p_filter(z, sb.min_ps)
        cdf = torch.softmax(z, dim=-1, dtype=torch.float64).cumsum_(dim=-1)  # [B, V]
        # NOTE: u in (0, 1) scaled by the row's total lands in a segment of positive mass: the first
        # index whose cdf reaches it has cdf[i] > cdf[i - 1] (zero-probability tokens are flat).
        target = uniforms(row_keys(sb.seeds, steps)).mul_(cdf[:, -1])
        picked = torch.searchsorted(cdf, target[:, None]).squeeze(1)
        return picked.clamp_(max=z.shape[-1] - 1)

    @staticmethod
    def _steps_tensor(
        steps: Sequence[int] | torch.Tensor | None,
        output_ids: Sequence[Sequence[int]] | None,
        batch_size: int,
        device: torch.device,
    ) -> torch.Tensor:
        if steps is None:
            steps = [len(o) for o in output_ids] if output_ids is not None else [0] * batch_size
        return torch.as_tensor(steps, dtype=torch.int64).to(device)


def apply_penalties(
    logits: torch.Tensor,
    sb: SamplingBatch,
    output_ids: Sequence[Sequence[int]] | None,
    prompt_ids: Sequence[Sequence[int]] | None,
) -> torch.Tensor:
    """Return penalised logits [B, V] (input untouched), in vLLM's order.

    Repetition (HF): tokens seen in prompt or output get logit / r if positive, logit * r if not.
    Then frequency and presence (OpenAI): subtract f * count and p * [count > 0] over the output.
    """
    batch, vocab = logits.shape
    counts = _token_counts(output_ids, sb.penalty_rows, batch, vocab, logits.device)  # [B, V]
    present = counts > 0
    seen = present.clone()
    if prompt_ids is not None:
        seen |= _token_counts(prompt_ids, sb.penalty_rows, batch, vocab, logits.device) > 0
    r = sb.repetition_penalties[:, None]
    penalised = torch.where(logits > 0, logits / r, logits * r)
    logits = torch.where(seen, penalised, logits)
    return logits - sb.frequency_penalties[:, None] * counts - sb.presence_penalties[:, None] * present


def _token_counts(
    ids: Sequence[Sequence[int]] | None, rows: list[int], batch: int, vocab: int, device: torch.device
) -> torch.Tensor:
    """Occurrences [B, V] float32 of each token in `ids[r]` for r in `rows` (others stay 0)."""
    counts = torch.zeros(batch, vocab, dtype=torch.float32, device=device)
    if ids is not None:
        row_idx = [r for r in rows for _ in ids[r]]
        tok_idx = [t for r in rows for t in ids[r]]
        if tok_idx:
            index = torch.tensor([row_idx, tok_idx], dtype=torch.int64).to(device)  # [2, n]
            counts.index_put_(tuple(index), torch.ones(len(tok_idx), device=device), accumulate=True)
    return counts


def top_k_filter(z: torch.Tensor, top_ks: torch.Tensor, max_k: int) -> torch.Tensor:
    """Keep each row's `top_ks` largest entries of z [B, V] (ties with the k-th kept), -inf elsewhere."""
    top = z.topk(min(max_k, z.shape[-1]), dim=-1).values  # [B, max_k]
    kth = top.gather(1, (top_ks.clamp(max=top.shape[-1]) - 1)[:, None])  # [B, 1]
    keep = (z >= kth) | (top_ks >= z.shape[-1])[:, None]
    return z.masked_fill(~keep, float("-inf"))


def top_k_top_p_filter(z: torch.Tensor, top_ks: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """Top-k (ties with the k-th kept), then top-p over the renormalised rest: keep the fewest
    tokens whose mass reaches p. Rows with top_p == 1 are only top-k filtered, exactly as
    `top_k_filter` does, so a row's result never depends on the other rows of its batch."""
    sorted_z, order = z.sort(dim=-1, descending=True, stable=True)  # [B, V]
    kth = sorted_z.gather(1, (top_ks.clamp(max=z.shape[-1]) - 1)[:, None])  # [B, 1]
    drop = sorted_z < kth
    probs = sorted_z.masked_fill(drop, float("-inf")).softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # NOTE: rank 0 always kept (mass 0 <= p)
    drop |= (mass_before > top_ps[:, None]) & (top_ps < 1.0)[:, None]
    return z.scatter(1, order, sorted_z.masked_fill(drop, float("-inf")))


def min_p_filter(z: torch.Tensor, min_ps: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the row's largest (log domain)."""
    threshold = z.max(dim=-1, keepdim=True).values + torch.log(min_ps)[:, None]  # [B, 1]
    return z.masked_fill(z < threshold, float("-inf"))


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Log-softmax of `logits` [N, V] at `ids` [N] -> [N] float32, `chunk` rows at a time."""
    out = [
        rows.float().gather(1, i[:, None]).squeeze(1) - rows.float().logsumexp(dim=-1)
        for rows, i in zip(logits.split(chunk), ids.split(chunk))
    ]
    return torch.cat(out) if out else logits.new_empty(0, dtype=torch.float32)


def top_token_logprobs(logits: torch.Tensor, k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest log-softmax values of each row of `logits` [N, V]: ([N, k] values, [N, k] ids)."""
    k = min(k, logits.shape[-1])
    parts = [torch.log_softmax(rows.float(), dim=-1).topk(k, dim=-1) for rows in logits.split(chunk)]
    if not parts:
        return logits.new_empty(0, k, dtype=torch.float32), logits.new_empty(0, k, dtype=torch.int64)
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])
