"""bf16 on CPU, in a batch-invariant forward: recomputing the last tokens of a cached prompt gives
the logits its first, uncached prefill got, bit for bit, so a radix-cache hit never changes a greedy
output; tokens that were generated one at a time leave the K/V a prefill of them leaves (a program
that reads its own output back hits the cache without changing an output); and a request decodes the
same logits alone or inside a batch of requests sharing its prefix."""

from __future__ import annotations

import pytest
import torch

from radixrt.radix_cache.pool import KVPool
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.model_runner import ModelRunner
from tests.cpu import BF16_INVARIANT

pytestmark = pytest.mark.skipif(not BF16_INVARIANT, reason="needs radixrt's C++ CPU kernels")


@pytest.fixture(scope="module")
def runner(embedded_model_dir):
    return ModelRunner(embedded_model_dir, dtype="bfloat16", device="cpu", attention_backend="torch")


@pytest.mark.parametrize("tail", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_recomputing_a_cached_prompts_tail_gives_its_first_logits(runner, tail, seed):
    pool = KVPool(256, *runner.kv_shape(), dtype=runner.dtype)
    n = 30 + 7 * seed
    ids = torch.randint(100, 20_000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    slots = list(range(1, n + 1))
    first = runner.forward(ForwardBatch.build([ids], [slots], prefill=[True], invariant=True), pool)
    # the tree holds the first run's KV; the last `tail` tokens are computed again into new slots
    again_slots = slots[: n - tail] + list(range(200, 200 + tail))
    again = runner.forward(ForwardBatch.build([ids[n - tail :]], [again_slots], prefill=[True], invariant=True), pool)
    assert torch.equal(first, again)


def test_generated_tokens_leave_the_kv_a_prefill_of_them_leaves(runner):
    pool = KVPool(256, *runner.kv_shape(), dtype=runner.dtype)
    gen = torch.Generator().manual_seed(11)
    prompt = torch.randint(100, 20_000, (40,), generator=gen).tolist()
    generated = torch.randint(100, 20_000, (6,), generator=gen).tolist()
    after = torch.randint(100, 20_000, (5,), generator=gen).tolist()  # what the program sends next
    slots = list(range(1, 41))
    runner.forward(ForwardBatch.build([prompt], [slots], prefill=[True], invariant=True), pool)
    for j, token in enumerate(generated):  # decode steps, as a request generating them runs
        slots = slots + [41 + j]
        runner.forward(ForwardBatch.build([[token]], [slots], invariant=True), pool)
    # the next call hits the cache on prompt + generated, and prefills only its new tokens
    hit = runner.forward(
        ForwardBatch.build([after], [slots + list(range(100, 105))], prefill=[True], invariant=True), pool
    )
    # a cacheless server prefills all of it
    whole = prompt + generated + after
    cold = runner.forward(
        ForwardBatch.build([whole], [list(range(150, 150 + len(whole)))], prefill=[True], invariant=True), pool
    )
    assert torch.equal(hit[-1], cold[-1])


def test_a_decode_row_is_the_same_alone_and_among_requests_sharing_its_prefix(runner):
    # 12 requests after one 300-token prefix: enough sharers that a plain forward reads the prefix
    # once for all of them (shared_prefix_decode), which an invariant forward must not do
    pool = KVPool(1024, *runner.kv_shape(), dtype=runner.dtype)
    gen = torch.Generator().manual_seed(7)
    prefix = torch.randint(100, 20_000, (300,), generator=gen).tolist()
    runner.forward(ForwardBatch.build([prefix], [list(range(1, 301))], prefill=[True]), pool)
    tails = torch.randint(100, 20_000, (12, 3), generator=gen).tolist()
    seqs = []
    for i, tail in enumerate(tails):
        own = list(range(301 + 3 * i, 304 + 3 * i))
        runner.forward(ForwardBatch.build([tail], [list(range(1, 301)) + own], prefill=[True]), pool)
        seqs.append(list(range(1, 301)) + own + [400 + i])
    step = torch.randint(100, 20_000, (12,), generator=gen).tolist()

    def decode(rows: list[int], invariant: bool) -> torch.Tensor:
        batch = ForwardBatch.build([[step[i]] for i in rows], [seqs[i] for i in rows], invariant=invariant)
        return runner.forward(batch, pool)

    together = decode(list(range(12)), invariant=True)
    for i in (0, 5, 11):
        assert torch.equal(decode([i], invariant=True)[0], together[i])
    # where it is built (AVX512-BF16), the plain forward takes the shared-prefix kernel here, and it
    # rounds differently
    shared = "cpu_kernels" if runner.backend.extend_kernel else "off"
    assert runner.backend.implementations()["shared_prefix_decode"] == shared
    torch.testing.assert_close(decode(list(range(12)), invariant=False), together, rtol=0.05, atol=0.25)
