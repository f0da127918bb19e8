"""The C++ decode kernel for requests that share cached tiles (layers/csrc/shared_prefix_decode.cpp,
bf16 on AVX512-BF16) against a float64 softmax reference and the per-request decode kernel, and
the torch backend's choice between the two. The kernel shares a run of tiles among at least
`min_requests` requests: 2 here exercises every shape of the trie on small batches."""

from __future__ import annotations

import pytest
import torch

from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers import cpu_kernels
from radixrt.workers.layers.attention.torch_backend import SHARED_PREFIX_MIN_REQUESTS, TorchAttentionBackend
from radixrt.workers.layers.cpu_kernels import cpu_flags
from tests.workers.test_cpu_decode_kernel import reference

pytestmark = pytest.mark.skipif("avx512_bf16" not in cpu_flags(), reason="the kernel needs AVX512-BF16")

POOL_SLOTS = 6000


@pytest.fixture(scope="module")
def ops():
    namespace = cpu_kernels.load()
    assert namespace is not None, "a C++ compiler is here, so the kernels must build"
    return namespace


def fork_tree(seed: int = 0) -> list[list[int]]:
    """Slot lists shaped like a program's forks: a 300-slot root prefix (4 full tiles and part of a
    fifth) shared by all; two branches of 3 forks extend it by 200 shared slots each, then each
    fork by its own 1-90; one fork repeated exactly; a request sharing only 40 slots (no whole
    tile); an unrelated request; and one of a single slot."""
    g = torch.Generator().manual_seed(seed)
    free = (torch.randperm(POOL_SLOTS - 1, generator=g) + 1).tolist()

    def take(n: int) -> list[int]:
        return [free.pop() for _ in range(n)]

    root = take(300)
    seqs = []
    for _ in range(2):
        branch = root + take(200)
        seqs += [branch + take(n) for n in (1, 37, 90)]
    seqs.append(list(seqs[1]))
    seqs.append(root[:40] + take(100))
    seqs.append(take(130))
    seqs.append(take(1))
    return seqs


def make_case(seqs: list[list[int]], heads: int, kv_heads: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k_pool = torch.randn(POOL_SLOTS, kv_heads, dim, generator=g).bfloat16()
    v_pool = torch.randn(POOL_SLOTS, kv_heads, dim, generator=g).bfloat16()
    q = torch.randn(len(seqs), heads + 2 * kv_heads, dim, generator=g).bfloat16()[:, :heads]  # strided rows
    slots = torch.tensor([s for seq in seqs for s in seq])
    lens = torch.tensor([len(seq) for seq in seqs])
    starts = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)[:-1]])
    return q, k_pool, v_pool, slots, starts, lens


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (8, 2, 128), (4, 4, 64), (6, 1, 64)])
def test_matches_a_float64_softmax(ops, heads, kv_heads, dim):
    args = make_case(fork_tree(), heads, kv_heads, dim)
    args[0][6] = args[0][1]  # the repeated fork asks the same query too
    out = ops.shared_prefix_decode(*args, dim**-0.5, 2)
    assert out.shape == (args[0].shape[0], heads * dim) and out.dtype == torch.bfloat16
    expected = reference(*args, dim**-0.5)
    # bf16 products and probabilities, float32 sums, one bf16 rounding of the output
    torch.testing.assert_close(out.double(), expected, rtol=1.6e-2, atol=1.2e-2)
    # as close to the reference as the per-request kernel, which keeps probabilities in float32
    per_request = ops.decode_attention(*args, dim**-0.5)
    error, baseline = (out.double() - expected).abs().mean(), (per_request.double() - expected).abs().mean()
    assert error < 2 * baseline + 1e-4
    # the exact repeat of a fork gets that fork's bits
    assert torch.equal(out[6], out[1])


def test_requests_that_share_no_tile_get_the_per_request_kernels_bits(ops):
    """Their whole sequence goes through decode_attention's loop: a batch that shares nothing, and
    the unrelated requests of a batch that does, get exactly what decode_attention computes."""
    seqs = fork_tree(seed=1)
    q, k_pool, v_pool, slots, starts, lens = make_case(seqs, 9, 3, 64, seed=1)
    together = ops.shared_prefix_decode(q, k_pool, v_pool, slots, starts, lens, 0.125, 2)
    per_request = ops.decode_attention(q, k_pool, v_pool, slots, starts, lens, 0.125)
    for b in (7, 8, 9):  # 40 shared slots, unrelated, one slot
        assert torch.equal(together[b], per_request[b])
    alone = [7, 8, 9]
    sub = make_case([seqs[b] for b in alone], 9, 3, 64, seed=1)
    sub = (q[alone], k_pool, v_pool, *sub[3:])
    assert torch.equal(ops.shared_prefix_decode(*sub, 0.125, 2), ops.decode_attention(*sub, 0.125))
    # groups smaller than min_requests are not shared: 3 forks per branch, 7 under the root
    assert torch.equal(ops.shared_prefix_decode(q, k_pool, v_pool, slots, starts, lens, 0.125, 8), per_request)
    partly = ops.shared_prefix_decode(q, k_pool, v_pool, slots, starts, lens, 0.125, 4)  # the root only
    assert not torch.equal(partly[:7], together[:7])
    torch.testing.assert_close(partly, per_request, rtol=1.6e-2, atol=1.2e-2)


def test_a_forks_result_depends_on_its_sequence_not_its_place_in_the_batch(ops):
    seqs = fork_tree(seed=2)
    q, k_pool, v_pool, slots, starts, lens = make_case(seqs, 9, 3, 64, seed=2)
    out = ops.shared_prefix_decode(q, k_pool, v_pool, slots, starts, lens, 0.125, 2)
    order = list(reversed(range(len(seqs))))
    shuffled = make_case([seqs[b] for b in order], 9, 3, 64, seed=2)
    again = ops.shared_prefix_decode(q[order], k_pool, v_pool, *shuffled[3:], 0.125, 2)
    assert torch.equal(again, out[order])


def test_an_empty_batch_gives_an_empty_result(ops):
    q, k_pool, v_pool, slots, starts, lens = make_case(fork_tree()[:2], 9, 3, 64)
    out = ops.shared_prefix_decode(q[:0], k_pool, v_pool, slots, starts[:0], lens[:0], 0.125, 2)
    assert out.shape == (0, 9 * 64)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "q": a["q"].float(), "k_pool": a["k_pool"].float(), "v_pool": a["v_pool"].float()},
         "bfloat16 only"),
        (lambda a: {**a, "kv_starts": a["kv_starts"][:1]}, "one start and length per row"),
        (lambda a: {**a, "kv_lens": a["kv_lens"] + 10_000}, "non-empty range of kv_indices"),
        (lambda a: {**a, "kv_lens": a["kv_lens"] * 0}, "non-empty range of kv_indices"),
        (lambda a: {**a, "kv_indices": a["kv_indices"].int()}, "int64"),
        (lambda a: {**a, "q": a["q"][..., :32], "k_pool": a["k_pool"][..., :32].contiguous(),
                    "v_pool": a["v_pool"][..., :32].contiguous()}, "head_dim 32"),
        (lambda a: {**a, "k_pool": a["k_pool"][::2], "v_pool": a["v_pool"][::2]}, "contiguous"),
        (lambda a: {**a, "min_requests": 1}, "at least 2"),
        (lambda a: {**a, "q": a["q"].repeat(1, 9, 1)[:, :36]}, "at most 16 query heads per kv head"),
    ],
)  # fmt: skip
def test_bad_inputs_raise_clear_errors(ops, change, message):
    q, k_pool, v_pool, slots, starts, lens = make_case(fork_tree()[:3], 4, 2, 64)
    args = dict(q=q, k_pool=k_pool, v_pool=v_pool, kv_indices=slots, kv_starts=starts, kv_lens=lens, scale=0.125,
                min_requests=2)  # fmt: skip
    with pytest.raises(RuntimeError, match=message):
        ops.shared_prefix_decode(*change(args).values())


def test_backend_takes_the_shared_kernel_only_when_enough_requests_share_a_tile(ops):
    heads, kv_heads, dim = 9, 3, 64
    g = torch.Generator().manual_seed(4)
    pool = type("Pool", (), {"k_buffers": [torch.randn(2048, kv_heads, dim, generator=g).bfloat16()],
                             "v_buffers": [torch.randn(2048, kv_heads, dim, generator=g).bfloat16()]})()  # fmt: skip
    prefix, wide = list(range(1, 201)), SHARED_PREFIX_MIN_REQUESTS
    cases = {
        "forks": ([prefix + [300 + i] for i in range(wide)], True),
        "too few forks": ([prefix + [300 + i] for i in range(wide - 1)], False),
        "63 shared slots": ([prefix[:63] + [300 + i] * 10 for i in range(wide)], False),
        "forks after another branch": ([prefix[:30] + [500] * 40] + [prefix + [300 + i] for i in range(wide)], True),
        "unrelated": ([list(range(1 + 200 * i, 150 + 200 * i)) for i in range(wide)], False),
        "forks beside a prefill": ([prefix + [300 + i] for i in range(wide)] + [list(range(400, 480))], True),
    }
    for name, (seqs, expect_shared) in cases.items():
        new = [[7]] * len(seqs)
        if name == "forks beside a prefill":
            new[-1] = list(range(3, 13))
        batch = ForwardBatch.build(new, seqs)
        q = torch.randn(batch.num_tokens, heads, dim, generator=g).bfloat16()
        k = torch.randn(batch.num_tokens, kv_heads, dim, generator=g).bfloat16()
        v = torch.randn(batch.num_tokens, kv_heads, dim, generator=g).bfloat16()
        backend = TorchAttentionBackend(heads, kv_heads, dim, cpu_kernels=ops, extend_kernel=True)
        backend.prepare(batch)
        assert backend._decode.shared_prefix is expect_shared, name
        out = backend.attend(q, k, v, 0, pool)
        per_request = TorchAttentionBackend(heads, kv_heads, dim, cpu_kernels=ops, extend_kernel=True)
        per_request.prepare(batch)
        per_request._decode.shared_prefix = False
        expected = per_request.attend(q, k, v, 0, pool)
        torch.testing.assert_close(out, expected, rtol=1.6e-2, atol=1.6e-2, msg=name)
