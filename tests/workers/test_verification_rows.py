"""A speculative verification (a decoding request's sampled token and its draft tokens in one
forward) gives each row the logits that decode steps of those tokens, one at a time, give: bit for
bit, in a batch-invariant forward. This is what keeps greedy outputs identical with speculation on.

(Verification rows run as decode rows. Where the bf16 extend kernel runs, decode rows take its
arithmetic (tiled_decode_attention), so they equal prefill rows too; elsewhere decode_attention
rounds differently from a prefill.)"""

from __future__ import annotations

import pytest
import torch

from radixrt.radix_cache.pool import KVPool
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.model_runner import ModelRunner
from tests.cpu import BF16_INVARIANT

DRAFTS = 4


def one_step_at_a_time(runner, pool, prefix_slots: list[int], tokens: list[int], first_slot: int) -> torch.Tensor:
    rows = []
    for j, tok in enumerate(tokens):
        seq = prefix_slots + list(range(first_slot, first_slot + j + 1))
        rows.append(runner.forward(ForwardBatch.build([[tok]], [seq], invariant=True), pool)[0])
    return torch.stack(rows)


def verified(runner, pool, prefix_slots, tokens, first_slot, others=()) -> torch.Tensor:
    """The verification rows of `tokens`, alone or after other decoding requests `others`."""
    new = [[tok] for tok, _ in others] + [tokens]
    seqs = [seq for _, seq in others] + [prefix_slots + list(range(first_slot, first_slot + len(tokens)))]
    rows = [[0] for _ in others] + [list(range(len(tokens)))]
    batch = ForwardBatch.build(new, seqs, logit_rows=rows, prefill=[False] * len(new), invariant=True)
    return runner.forward(batch, pool)[len(others) :]


def check(runner, seed: int) -> None:
    pool = KVPool(2048, *runner.kv_shape(), dtype=runner.dtype)
    gen = torch.Generator().manual_seed(seed)
    n = 40 + 37 * seed
    prompt = torch.randint(100, 20_000, (n,), generator=gen).tolist()
    prefix = list(range(1, n + 1))
    runner.forward(ForwardBatch.build([prompt], [prefix], prefill=[True], invariant=True), pool)
    tokens = torch.randint(100, 20_000, (1 + DRAFTS,), generator=gen).tolist()
    expected = one_step_at_a_time(runner, pool, prefix, tokens, 1000)
    assert torch.equal(verified(runner, pool, prefix, tokens, 1100), expected)
    # among plain decode rows of another request over the same prompt (a mixed batch)
    other = (int(tokens[0]), [*prefix, 1200])
    assert torch.equal(verified(runner, pool, prefix, tokens, 1300, [other]), expected)


@pytest.fixture(scope="module")
def tiny_f32(tiny_model_dir):
    return ModelRunner(tiny_model_dir, dtype="float32", device="cpu", attention_backend="torch")


@pytest.fixture(scope="module")
def embedded_bf16(embedded_model_dir):
    if not BF16_INVARIANT:
        pytest.skip("needs radixrt's C++ CPU kernels")
    return ModelRunner(embedded_model_dir, dtype="bfloat16", device="cpu", attention_backend="torch")


@pytest.mark.parametrize("seed", range(3))
def test_verification_rows_equal_decode_steps_float32(tiny_f32, seed):
    check(tiny_f32, seed)


@pytest.mark.parametrize("seed", range(3))
def test_verification_rows_equal_decode_steps_bf16_embedded(embedded_bf16, seed):
    check(embedded_bf16, seed)


def test_verification_rows_in_the_padded_torch_path_match_decode_steps(tiny_model_dir):
    # no C++ kernels (CUDA, or a CPU where they did not build): decode rows are one padded batch
    from radixrt.workers.layers.attention import TorchAttentionBackend

    runner = ModelRunner(tiny_model_dir, dtype="float32", device="cpu", attention_backend="torch")
    b = runner.backend
    runner.backend = TorchAttentionBackend(b.num_heads, b.num_kv_heads, b.head_dim)
    pool = KVPool(2048, *runner.kv_shape(), dtype=runner.dtype)
    prompt = torch.randint(100, 20_000, (50,), generator=torch.Generator().manual_seed(5)).tolist()
    prefix = list(range(1, 51))
    runner.forward(ForwardBatch.build([prompt], [prefix], prefill=[True], invariant=True), pool)
    tokens = [11, 22, 33, 44, 55]
    expected = one_step_at_a_time(runner, pool, prefix, tokens, 1000)
    other = (7, [*prefix, 1200])
    got = verified(runner, pool, prefix, tokens, 1300, [other])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
