"""The C++ CPU prefill-attention kernel (layers/csrc/extend_attention.cpp, bf16 on AVX512-BF16)
against a float64 softmax reference, its row independence, and the torch backend's use of it; and
the decode kernel that rounds as it does (tiled_decode_attention.cpp)."""

from __future__ import annotations

import pytest
import torch

from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers import cpu_kernels
from radixrt.workers.layers.attention import create_backend
from radixrt.workers.layers.attention.torch_backend import TorchAttentionBackend
from radixrt.workers.layers.cpu_kernels import cpu_flags
from tests.workers.test_cpu_decode_kernel import reference

pytestmark = pytest.mark.skipif("avx512_bf16" not in cpu_flags(), reason="the kernel needs AVX512-BF16")

REQUESTS = [(0, 37), (100, 5), (17, 1), (250, 64), (3, 3)]  # (cached prefix, new rows)


@pytest.fixture(scope="module")
def ops():
    namespace = cpu_kernels.load()
    assert namespace is not None, "a C++ compiler is here, so the kernels must build"
    return namespace


def make_case(heads: int, kv_heads: int, dim: int, requests=REQUESTS, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k_pool = torch.randn(3000, kv_heads, dim, generator=g).bfloat16()
    v_pool = torch.randn(3000, kv_heads, dim, generator=g).bfloat16()
    rows = sum(e for _, e in requests)
    q = torch.randn(rows, heads + 2 * kv_heads, dim, generator=g).bfloat16()[:, :heads]  # strided rows
    slots = torch.randperm(2999, generator=g)[: sum(p + e for p, e in requests)] + 1
    q_starts, q_lens, kv_starts, seq_lens, q_at, kv_at = [], [], [], [], 0, 0
    for prefix, new in requests:
        q_starts.append(q_at), q_lens.append(new), kv_starts.append(kv_at), seq_lens.append(prefix + new)
        q_at, kv_at = q_at + new, kv_at + prefix + new
    index = [torch.tensor(x) for x in (q_starts, q_lens, kv_starts, seq_lens)]
    return q, k_pool, v_pool, slots, index


def per_row_reference(q, k_pool, v_pool, slots, index, scale):
    """Row j of a request = a decode row over the first prefix + j + 1 slots."""
    starts, lens = [], []
    for kv_start, new, seq_len in zip(index[2].tolist(), index[1].tolist(), index[3].tolist()):
        starts += [kv_start] * new
        lens += [seq_len - new + j + 1 for j in range(new)]
    return reference(q, k_pool, v_pool, slots, torch.tensor(starts), torch.tensor(lens), scale)


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (8, 2, 128), (4, 4, 64), (6, 1, 64)])
def test_matches_a_float64_softmax(ops, heads, kv_heads, dim):
    q, k_pool, v_pool, slots, index = make_case(heads, kv_heads, dim)
    out = ops.extend_attention(q, k_pool, v_pool, slots, *index, dim**-0.5)
    assert out.shape == (q.shape[0], heads * dim) and out.dtype == torch.bfloat16
    expected = per_row_reference(q, k_pool, v_pool, slots, index, dim**-0.5)
    # bf16 products and probabilities, float32 sums, one bf16 rounding of the output
    torch.testing.assert_close(out.double(), expected, rtol=1.6e-2, atol=1.2e-2)


def test_a_prompt_prefilled_whole_or_in_pieces_gets_the_same_bits(ops):
    q, k_pool, v_pool, slots, _ = make_case(9, 3, 64, requests=[(0, 200)], seed=4)

    def piece(start: int, rows: int) -> torch.Tensor:  # rows start.. over a cached prefix of `start`
        index = [torch.tensor([x]) for x in (0, rows, 0, start + rows)]
        return ops.extend_attention(q[start : start + rows], k_pool, v_pool, slots, *index, 0.125)

    whole = piece(0, 200)
    assert torch.equal(torch.cat([piece(0, 61), piece(61, 3), piece(64, 1), piece(65, 135)]), whole)


def test_requests_sharing_prefix_slots_get_the_bits_they_get_alone(ops):
    """Fork siblings list the same slots for their prefix, and their tiles are packed once; tiles
    that only begin alike (same first slot, other slots or another length) must not be mixed up."""
    g = torch.Generator().manual_seed(6)
    k_pool = torch.randn(2000, 3, 64, generator=g).bfloat16()
    v_pool = torch.randn(2000, 3, 64, generator=g).bfloat16()
    shared = list(range(1, 301))  # 4 full tiles and part of a fifth
    sequences = [
        shared + [1001, 1002, 1003],
        shared + [1101, 1102],
        shared[:130] + [1201] + shared[131:] + [1202],  # tile 2 starts alike, then differs
        shared[:200] + [1301],  # tile 3 starts alike and is shorter
        list(range(1400, 1477)),
    ]
    new_rows = [3, 2, 40, 1, 77]
    q = torch.randn(sum(new_rows), 9, 64, generator=g).bfloat16()
    slots = torch.tensor([s for seq in sequences for s in seq])
    q_starts = torch.tensor([0, *torch.tensor(new_rows).cumsum(0)[:-1].tolist()])
    kv_starts = torch.tensor([0, *torch.tensor([len(s) for s in sequences]).cumsum(0)[:-1].tolist()])
    seq_lens = torch.tensor([len(s) for s in sequences])
    together = ops.extend_attention(
        q, k_pool, v_pool, slots, q_starts, torch.tensor(new_rows), kv_starts, seq_lens, 0.125
    )
    for i, (seq, rows) in enumerate(zip(sequences, new_rows)):
        one = [torch.tensor([x]) for x in (0, rows, 0, len(seq))]
        alone = ops.extend_attention(
            q[q_starts[i] : q_starts[i] + rows], k_pool, v_pool, torch.tensor(seq), *one, 0.125
        )
        assert torch.equal(together[q_starts[i] : q_starts[i] + rows], alone), f"request {i}"
    expected = per_row_reference(
        q, k_pool, v_pool, slots, [q_starts, torch.tensor(new_rows), kv_starts, seq_lens], 0.125
    )
    torch.testing.assert_close(together.double(), expected, rtol=1.6e-2, atol=1.2e-2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "q": a["q"].float()}, "bfloat16 only"),
        (lambda a: {**a, "q_lens": a["q_lens"][:2]}, "per request"),
        (lambda a: {**a, "q_lens": a["q_lens"] * 0 + 1000}, "new rows <= sequence length"),
        (lambda a: {**a, "slots": a["slots"].int()}, "int64"),
        (lambda a: {**a, "q_starts": a["q_starts"] + 100}, "within q and kv_indices"),
        (lambda a: {**a, "slots": a["slots"][:50]}, "within q and kv_indices"),
    ],
)
def test_bad_inputs_raise_clear_errors(ops, change, message):
    q, k_pool, v_pool, slots, index = make_case(4, 2, 64)
    args = dict(q=q, k_pool=k_pool, v_pool=v_pool, slots=slots, q_starts=index[0], q_lens=index[1],
                kv_starts=index[2], seq_lens=index[3])  # fmt: skip
    with pytest.raises(RuntimeError, match=message):
        ops.extend_attention(*change(args).values(), 0.125)


def test_backend_uses_it_for_bf16_prefills_only(ops):
    def backend(dtype=torch.bfloat16, dim=64):
        return create_backend("torch", "cpu", num_heads=9, num_kv_heads=3, head_dim=dim, dtype=dtype)

    assert backend().extend_kernel and backend(dim=128).extend_kernel
    assert not backend(dtype=torch.float32).extend_kernel
    assert not backend(dim=32).extend_kernel


def test_backend_kernel_and_sdpa_paths_agree_on_a_mixed_batch(ops):
    heads, kv_heads, dim = 9, 3, 64
    g = torch.Generator().manual_seed(5)
    k_buf = torch.randn(512, kv_heads, dim, generator=g).bfloat16()
    v_buf = torch.randn(512, kv_heads, dim, generator=g).bfloat16()
    batch = ForwardBatch.build(
        [[1], [2, 3, 4, 5, 6], [7], [8, 9]],
        [list(range(1, 41)), list(range(100, 160)), list(range(200, 401)), list(range(420, 422))],
    )
    q = torch.randn(batch.num_tokens, heads, dim, generator=g).bfloat16()
    k = torch.randn(batch.num_tokens, kv_heads, dim, generator=g).bfloat16()
    v = torch.randn(batch.num_tokens, kv_heads, dim, generator=g).bfloat16()
    outs = []
    for extend_kernel in (True, False):
        pool = type("Pool", (), {"k_buffers": [k_buf.clone()], "v_buffers": [v_buf.clone()]})()
        backend = TorchAttentionBackend(heads, kv_heads, dim, cpu_kernels=ops, extend_kernel=extend_kernel)
        backend.prepare(batch)
        outs.append(backend.attend(q, k, v, 0, pool))
    torch.testing.assert_close(outs[0].float(), outs[1].float(), rtol=2e-2, atol=2e-2)
    # with the extend kernel, decode rows round as it does: as one-row prefills of their tokens
    pool = type("Pool", (), {"k_buffers": [k_buf.clone()], "v_buffers": [v_buf.clone()]})()
    TorchAttentionBackend(heads, kv_heads, dim).store_kv(k, v, 0, pool, batch.out_slots)
    for row, seq in ((0, list(range(1, 41))), (6, list(range(200, 401)))):
        one = [torch.tensor([x]) for x in (0, 1, 0, len(seq))]
        alone = ops.extend_attention(
            q[row : row + 1], pool.k_buffers[0], pool.v_buffers[0], torch.tensor(seq), *one, dim**-0.5
        )
        assert torch.equal(outs[0][row], alone[0]), row


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (8, 2, 128), (4, 4, 64), (16, 1, 64), (6, 1, 128)])
def test_tiled_decode_rows_get_the_bits_extend_gives_them(ops, heads, kv_heads, dim):
    """What makes a generated token's K/V equal a prefill's: a decode row through the tiled kernel
    is bit for bit the last row of a prefill over the same sequence (groups above one block of query
    vectors included), and close to a float64 softmax."""
    lens = [1, 63, 64, 65, 300, 129]
    g = torch.Generator().manual_seed(9)
    k_pool = torch.randn(1000, kv_heads, dim, generator=g).bfloat16()
    v_pool = torch.randn(1000, kv_heads, dim, generator=g).bfloat16()
    q = torch.randn(len(lens), heads, dim, generator=g).bfloat16()
    slots = torch.randperm(999, generator=g)[: sum(lens)] + 1
    starts = torch.tensor([0, *torch.tensor(lens).cumsum(0)[:-1].tolist()])
    out = ops.tiled_decode_attention(q, k_pool, v_pool, slots, starts, torch.tensor(lens), dim**-0.5)
    assert out.shape == (len(lens), heads * dim) and out.dtype == torch.bfloat16
    prefill = ops.extend_attention(
        q,
        k_pool,
        v_pool,
        slots,
        torch.arange(len(lens)),
        torch.ones(len(lens), dtype=torch.long),
        starts,
        torch.tensor(lens),
        dim**-0.5,
    )
    assert torch.equal(out, prefill)
    expected = reference(q, k_pool, v_pool, slots, starts, torch.tensor(lens), dim**-0.5)
    torch.testing.assert_close(out.double(), expected, rtol=1.6e-2, atol=1.2e-2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "q": a["q"].float()}, "bfloat16 only"),
        (lambda a: {**a, "lens": a["lens"][:1]}, "one start and length per row"),
        (lambda a: {**a, "lens": a["lens"] * 0}, "non-empty range"),
        (lambda a: {**a, "starts": a["starts"] + 1000}, "non-empty range"),
        (lambda a: {**a, "slots": a["slots"].int()}, "int64"),
    ],
)
def test_tiled_decode_bad_inputs_raise_clear_errors(ops, change, message):
    k_pool, v_pool = torch.randn(100, 2, 64).bfloat16(), torch.randn(100, 2, 64).bfloat16()
    args = dict(q=torch.randn(2, 4, 64).bfloat16(), k_pool=k_pool, v_pool=v_pool, slots=torch.arange(1, 41),
                starts=torch.tensor([0, 20]), lens=torch.tensor([20, 20]))  # fmt: skip
    with pytest.raises(RuntimeError, match=message):
        ops.tiled_decode_attention(*change(args).values(), 0.125)
