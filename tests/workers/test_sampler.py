from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from radixrt.runtime.sampling_params import SamplingParams
from radixrt.workers.layers.sampler import (
    Sampler,
    SamplingBatch,
    as_int64,
    mix64,
    token_logprobs,
    top_token_logprobs,
)


def sample_many(logits_row: list[float], n: int, **kw) -> torch.Tensor:
    """Draw n tokens from one distribution: n rows with the same seed at steps 0..n-1."""
    sampler = Sampler(len(logits_row))
    sb = sampler.make_batch([SamplingParams(seed=7, **kw)] * n, "cpu")
    logits = torch.tensor([logits_row] * n)
    return sampler.sample(logits, sb, steps=list(range(n))).next_ids


def chi_square(ids: torch.Tensor, probs: torch.Tensor) -> float:
    observed = torch.bincount(ids, minlength=probs.numel()).double()
    expected = probs.double() * ids.numel()
    keep = expected > 0
    assert observed[~keep].sum() == 0, "sampled a token of probability 0"
    return float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def splitmix64_mix(z: int) -> int:
    m = (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_mix64_matches_python_splitmix64():
    values = [0, 1, 2, 12345, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 0x9E3779B97F4A7C15]
    got = mix64(torch.tensor([as_int64(v) for v in values]))
    assert got.tolist() == [as_int64(splitmix64_mix(v)) for v in values]


def test_from_params_sets_flags_from_sampling_rows_only():
    params = [
        SamplingParams(temperature=0.0, top_p=0.5, min_p=0.2),  # greedy: its filters are moot
        SamplingParams(temperature=0.8, top_k=-1),
        SamplingParams(top_k=1, top_p=0.3),  # top_k=1 is greedy
    ]
    sb = SamplingBatch.from_params(params, "cpu", vocab_size=100)
    assert sb.greedy.tolist() == [True, False, True]
    assert sb.top_ks.tolist() == [100, 100, 1]
    assert not (sb.all_greedy or sb.need_top_p or sb.need_top_k or sb.need_min_p or sb.need_penalties)
    sb = SamplingBatch.from_params([SamplingParams(top_k=5, top_p=0.9, presence_penalty=1.0)], "cpu", 100)
    assert sb.need_top_k and sb.need_top_p and sb.need_penalties and sb.max_top_k == 5
    assert SamplingBatch.from_params(params[::2], "cpu", 100).all_greedy


@pytest.mark.parametrize("batch", [1, 64])
def test_greedy_rows_take_argmax(batch):
    logits = torch.randn(batch, 300, generator=torch.Generator().manual_seed(0))
    sampler = Sampler(300)
    out = sampler.sample(logits, sampler.make_batch([SamplingParams(temperature=0.0)] * batch, "cpu"))
    assert torch.equal(out.next_ids, logits.argmax(-1))


def test_logprobs_are_skipped_only_when_nobody_asks():
    logits = torch.randn(8, 300, generator=torch.Generator().manual_seed(2))
    sampler = Sampler(300)
    sb = sampler.make_batch([SamplingParams(temperature=0.9, seed=i) for i in range(8)], "cpu")
    full = sampler.sample(logits, sb, steps=[3] * 8)
    bare = sampler.sample(logits, sb, steps=[3] * 8, with_logprobs=False)
    assert torch.equal(bare.next_ids, full.next_ids) and bare.logprobs is None and bare.top_logprobs is None
    top = sampler.sample(logits, sb, steps=[3] * 8, with_logprobs=False, top_logprobs_num=2)
    assert top.top_logprobs is not None and torch.equal(top.logprobs, full.logprobs)


def test_temperature_sampling_frequencies_match_softmax():
    logits = [2.0, 1.0, 0.5, 0.0, -1.0, -3.0]
    ids = sample_many(logits, 6000, temperature=0.7)
    probs = torch.softmax(torch.tensor(logits) / 0.7, -1)
    assert chi_square(ids, probs) < 25.0  # df=5: p < 1e-4 if the sampler were right


def test_top_k_samples_from_renormalised_top_k():
    logits = [1.0, 0.8, 0.5, 0.4, 0.0, -0.5]
    ids = sample_many(logits, 6000, temperature=1.3, top_k=3)
    probs = torch.softmax(torch.tensor(logits[:3]) / 1.3, -1)
    assert chi_square(ids, torch.cat([probs, torch.zeros(3)])) < 20.0


def test_distinct_seeds_at_one_step_also_match_softmax():
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]] * 4000)
    sampler = Sampler(4, seed=3)
    sb = sampler.make_batch([SamplingParams(seed=s) for s in range(4000)], "cpu")
    ids = sampler.sample(logits, sb, steps=[5] * 4000).next_ids
    assert chi_square(ids, torch.softmax(logits[0], -1)) < 22.0


def test_top_k_1_equals_greedy():
    logits = torch.randn(64, 500, generator=torch.Generator().manual_seed(1))
    sampler = Sampler(500)
    sb = sampler.make_batch([SamplingParams(temperature=1.5, top_k=1)] * 64, "cpu")
    assert torch.equal(sampler.sample(logits, sb).next_ids, logits.argmax(-1))


# probs 0.5, 0.3, 0.1, 0.05, 0.05: each filter below leaves exactly tokens {0, 1}.
FIVE = [math.log(p) for p in (0.5, 0.3, 0.1, 0.05, 0.05)]


@pytest.mark.parametrize(
    "filters",
    [
        {"top_k": 2},
        {"top_p": 0.75},
        {"min_p": 0.25},
        {"top_k": 3, "top_p": 0.7},
        {"top_p": 0.9, "min_p": 0.5},
    ],
)
def test_filters_sample_exactly_the_allowed_set(filters):
    ids = sample_many(FIVE, 2000, **filters)
    assert set(ids.tolist()) == {0, 1}


def test_top_p_keeps_the_token_that_crosses_p():
    ids = sample_many(FIVE, 3000, top_p=0.85)  # 0.5 + 0.3 < 0.85: token 2 is needed to reach p
    assert set(ids.tolist()) == {0, 1, 2}


def penalised_by_hand(row: list[float], output: list[int], prompt: list[int], f: float, p: float, r: float):
    row = list(row)
    for t in set(output) | set(prompt):
        row[t] = row[t] / r if row[t] > 0 else row[t] * r
    for t in set(output):
        row[t] -= f * output.count(t) + p
    return torch.tensor(row)


def test_penalties_match_hand_computation():
    row = [2.0, 1.5, -0.5, 0.7, 0.0, -2.0]
    params = SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=0.3, repetition_penalty=1.5)
    sampler = Sampler(6)
    output, prompt = [1, 1, 2, 4], [3, 5]
    out = sampler.sample(
        torch.tensor([row]), sampler.make_batch([params], "cpu"),
        output_ids=[output], prompt_ids=[prompt], top_logprobs_num=6,
    )  # fmt: skip
    values, ids = out.top_logprobs
    logp = torch.empty(6).scatter_(0, ids[0], values[0])
    expected = torch.log_softmax(penalised_by_hand(row, output, prompt, 0.5, 0.3, 1.5), -1)
    torch.testing.assert_close(logp, expected)
    assert out.next_ids.item() == 0


def test_penalties_only_touch_their_own_rows():
    logits = torch.tensor([[3.0, 2.9, 0.0]] * 2)
    sampler = Sampler(3)
    params = [SamplingParams(temperature=0.0, presence_penalty=1.0), SamplingParams(temperature=0.0)]
    out = sampler.sample(logits, sampler.make_batch(params, "cpu"), output_ids=[[0], [0]])
    assert out.next_ids.tolist() == [1, 0]
    assert out.logprobs[1].item() == pytest.approx(torch.log_softmax(logits[1], -1)[0].item())


def test_repetition_penalty_shifts_sampling_away_from_seen_tokens():
    base = sample_many([1.0, 1.0, -1.0, -1.0], 2000)
    sampler = Sampler(4)
    sb = sampler.make_batch([SamplingParams(seed=7, repetition_penalty=2.0)] * 2000, "cpu")
    logits = torch.tensor([[1.0, 1.0, -1.0, -1.0]] * 2000)
    pen = sampler.sample(logits, sb, output_ids=[[0, 2]] * 2000, steps=list(range(2000))).next_ids
    counts, pen_counts = torch.bincount(base, minlength=4), torch.bincount(pen, minlength=4)
    assert pen_counts[0] < counts[0] and pen_counts[2] < counts[2]
    assert pen_counts[1] > counts[1] and pen_counts[3] > counts[3]


def test_seeded_row_samples_the_same_alone_or_in_a_batch():
    gen = torch.Generator().manual_seed(2)
    row = torch.randn(1, 1000, generator=gen) * 2
    mine = SamplingParams(seed=1234, temperature=0.9, top_p=0.95, min_p=0.01)
    sampler = Sampler(1000)
    others = [SamplingParams(temperature=0.5 + i / 64, top_k=(i % 7) * 10 - 1) for i in range(64)]
    alone, batched = [], []
    for step in range(20):
        alone.append(sampler.sample(row, sampler.make_batch([mine], "cpu"), steps=[step]).next_ids.item())
        logits = torch.randn(64, 1000, generator=gen) * 3
        logits[37] = row[0]
        params = others[:37] + [mine] + others[38:]
        steps = [step if i == 37 else 50 + i for i in range(64)]
        out = sampler.sample(logits, sampler.make_batch(params, "cpu"), steps=steps)
        batched.append(out.next_ids[37].item())
    assert alone == batched
    assert len(set(alone)) > 5  # the step changes the noise


def test_top_k_row_ignores_whether_batch_mates_use_top_p():
    row = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.5, 0.0]])  # ties at the k-th: all three kept
    mine = SamplingParams(seed=9, top_k=2)
    sampler = Sampler(6)
    for step in range(30):
        alone = sampler.sample(row, sampler.make_batch([mine], "cpu"), steps=[step]).next_ids
        params = [mine, SamplingParams(seed=1, top_p=0.5)]
        batched = sampler.sample(row.repeat(2, 1), sampler.make_batch(params, "cpu"), steps=[step, 0])
        assert batched.next_ids[0] == alone[0]


def test_accepts_duck_typed_params():
    params = SimpleNamespace(
        temperature=0.0, top_p=1.0, top_k=-1, min_p=0.0, seed=None,
        frequency_penalty=0.0, presence_penalty=0.0, repetition_penalty=1.0,
    )  # fmt: skip
    sampler = Sampler(4)
    out = sampler.sample(torch.tensor([[0.0, 3.0, 1.0, 2.0]]), sampler.make_batch([params], "cpu"))
    assert out.next_ids.tolist() == [1]


def test_unseeded_rows_differ_across_batches_and_rows():
    logits = torch.zeros(16, 1000)
    sampler = Sampler(1000)
    params = [SamplingParams()] * 16
    first = sampler.sample(logits, sampler.make_batch(params, "cpu")).next_ids.tolist()
    second = sampler.sample(logits, sampler.make_batch(params, "cpu")).next_ids.tolist()
    assert first != second
    assert len(set(first)) > 8


def test_sampler_seed_makes_unseeded_requests_reproducible():
    logits = torch.zeros(8, 1000)
    draws = []
    for _ in range(2):
        sampler = Sampler(1000, seed=5)
        draws.append(sampler.sample(logits, sampler.make_batch([SamplingParams()] * 8, "cpu")).next_ids)
    assert torch.equal(draws[0], draws[1])


@pytest.mark.parametrize("batch", [1, 64])
def test_logprobs_are_log_softmax_of_logits_before_temperature(batch):
    logits = torch.randn(batch, 200, generator=torch.Generator().manual_seed(3)) * 2
    params = [SamplingParams(temperature=0.0 if i % 3 == 0 else 0.5, top_k=20) for i in range(batch)]
    sampler = Sampler(200)
    out = sampler.sample(logits, sampler.make_batch(params, "cpu"), top_logprobs_num=5)
    expected = torch.log_softmax(logits, -1)
    torch.testing.assert_close(out.logprobs, expected.gather(1, out.next_ids[:, None]).squeeze(1))
    values, ids = out.top_logprobs
    assert values.shape == ids.shape == (batch, 5)
    assert torch.all(values[:, :-1] >= values[:, 1:])
    torch.testing.assert_close(values, expected.gather(1, ids))
    torch.testing.assert_close(values[:, 0], expected.max(-1).values)


def test_masked_tokens_are_never_sampled_even_at_high_temperature():
    logits = torch.randn(64, 500, generator=torch.Generator().manual_seed(4))
    allowed = torch.rand(64, 500, generator=torch.Generator().manual_seed(5)) < 0.1
    logits = logits.masked_fill(~allowed, float("-inf"))
    sampler = Sampler(500)
    hot = (SamplingParams(temperature=100.0), SamplingParams(temperature=50.0, top_p=0.99, min_p=0.01))
    for params in hot:
        for step in range(10):
            out = sampler.sample(logits, sampler.make_batch([params] * 64, "cpu"), steps=[step] * 64)
            assert allowed.gather(1, out.next_ids[:, None]).all()


def test_token_logprobs_helpers_match_log_softmax_in_chunks():
    logits = torch.randn(10, 50, generator=torch.Generator().manual_seed(6))
    ids = torch.randint(0, 50, (10,), generator=torch.Generator().manual_seed(7))
    expected = torch.log_softmax(logits, -1)
    at_ids = expected.gather(1, ids[:, None]).squeeze(1)
    torch.testing.assert_close(token_logprobs(logits, ids, chunk=3), at_ids)
    values, top_ids = top_token_logprobs(logits, 4, chunk=3)
    torch.testing.assert_close(values, expected.topk(4, -1).values)
    assert torch.equal(top_ids, expected.topk(4, -1).indices)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_samples_the_same_tokens_as_cpu():
    logits = torch.randn(32, 5000, generator=torch.Generator().manual_seed(8)) * 2
    params = [SamplingParams(seed=i, temperature=0.8, top_p=0.9 if i % 2 else 1.0, top_k=i * 3 - 1) for i in range(32)]
    sampler = Sampler(5000)
    cpu = sampler.sample(logits, sampler.make_batch(params, "cpu"), steps=list(range(32)))
    gpu = sampler.sample(logits.cuda(), sampler.make_batch(params, "cuda"), steps=list(range(32)))
    assert torch.equal(cpu.next_ids, gpu.next_ids.cpu())
