"""bf16 on CPU: recomputing the last tokens of a cached prompt gives the logits its first,
uncached prefill got, bit for bit, so a radix-cache hit never changes a greedy output."""

from __future__ import annotations

import pytest
import torch

from radixrt.radix_cache.pool import KVPool
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers.packed_linear import can_pack
from radixrt.workers.model_runner import ModelRunner
from tests.cpu import VERIFIED_BF16_KERNELS

pytestmark = pytest.mark.skipif(
    not (can_pack(torch.device("cpu"), torch.bfloat16) and VERIFIED_BF16_KERNELS),
    reason="bf16 bit-identity is verified on AVX512-BF16 CPUs without AMX only",
)


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
    first = runner.forward(ForwardBatch.build([ids], [slots], prefill=[True]), pool)
    # the tree holds the first run's KV; the last `tail` tokens are computed again into new slots
    again_slots = slots[: n - tail] + list(range(200, 200 + tail))
    again = runner.forward(ForwardBatch.build([ids[n - tail :]], [again_slots], prefill=[True]), pool)
    assert torch.equal(first, again)
