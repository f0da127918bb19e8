"""The C++ CPU decode-attention kernel (layers/csrc) against a float64 softmax
reference, the torch backend with and without it, and the fallback when it cannot be built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers import cpu_kernels
from radixrt.workers.layers.attention import create_backend
from radixrt.workers.layers.attention.torch_backend import TORCH, AttentionChoice, TorchAttentionBackend

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="no C++ compiler")  # fmt: skip

POOL_SLOTS = 4096


@pytest.fixture(scope="module")
def kernels():
    module = cpu_kernels.load()
    assert module is not None, "a C++ compiler is here, so the kernels must build"
    return module


def make_case(heads: int, kv_heads: int, dim: int, lens: list[int], dtype: torch.dtype, seed: int = 0):
    """q as a strided view of a fused qkv output, pools with random contents, scattered slots."""
    g = torch.Generator().manual_seed(seed)
    k_pool = torch.randn(POOL_SLOTS, kv_heads, dim, generator=g).to(dtype)
    v_pool = torch.randn(POOL_SLOTS, kv_heads, dim, generator=g).to(dtype)
    qkv = torch.randn(len(lens), heads + 2 * kv_heads, dim, generator=g).to(dtype)
    slots = torch.randperm(POOL_SLOTS - 1, generator=g)[: sum(lens)] + 1
    starts = torch.tensor([0, *lens[:-1]]).cumsum(0)
    return qkv[:, :heads], k_pool, v_pool, slots, starts, torch.tensor(lens)


def reference(q, k_pool, v_pool, slots, starts, lens, scale) -> torch.Tensor:
    group = q.shape[1] // k_pool.shape[1]
    rows = []
    for b in range(q.shape[0]):
        seq = slots[starts[b] : starts[b] + lens[b]]
        k = k_pool[seq].double().repeat_interleave(group, dim=1)  # [L, H, D]
        v = v_pool[seq].double().repeat_interleave(group, dim=1)
        p = torch.softmax(torch.einsum("hd,lhd->hl", q[b].double(), k) * scale, dim=-1)
        rows.append(torch.einsum("hl,lhd->hd", p, v).reshape(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    # (16, 1, 64): a group above the compiled-in constants; 256: rows spilled from registers
    ("heads", "kv_heads", "dim"),
    [(9, 3, 64), (4, 4, 128), (8, 2, 80), (4, 1, 16), (16, 1, 32), (16, 1, 64), (4, 2, 256)],
)
def test_matches_a_float64_softmax(kernels, dtype, heads, kv_heads, dim):
    lens = [1, 37, 300, 5, 128]
    q, k_pool, v_pool, slots, starts, lens_t = make_case(heads, kv_heads, dim, lens, dtype)
    out = kernels.decode_attention(q, k_pool, v_pool, slots, starts, lens_t, dim**-0.5)
    assert out.shape == (len(lens), heads * dim) and out.dtype == dtype
    expected = reference(q, k_pool, v_pool, slots, starts, lens_t, dim**-0.5)
    # float32: accumulation order only; bf16: plus the output's rounding (8 mantissa bits)
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    # a one-slot sequence returns its V row exactly (softmax of one score is 1)
    assert torch.equal(out[0].view(heads, dim), v_pool[slots[0]].repeat_interleave(heads // kv_heads, dim=0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (4, 4, 128), (16, 1, 32), (2, 1, 16)])
def test_a_prompts_rows_attended_together_get_the_bits_each_gets_alone(kernels, dtype, heads, kv_heads, dim):
    # 11 prompt rows over a 40-slot prefix (row j reads 41 + j slots), then a decode row of another
    # sequence: the prompt's rows are attended in runs that share their K/V reads
    q, k_pool, v_pool, slots, _, _ = make_case(heads, kv_heads, dim, [60] * 12, dtype, seed=dim)
    starts = torch.tensor([0] * 11 + [60])
    lens = torch.tensor([41 + j for j in range(11)] + [7])
    assert_rows_get_their_bits_alone(kernels, q, k_pool, v_pool, slots, starts, lens)


def assert_rows_get_their_bits_alone(kernels, q, k_pool, v_pool, slots, starts, lens):
    """Each row of one decode_attention call equals the row attended alone, and the float64 softmax."""
    dim = q.shape[-1]
    together = kernels.decode_attention(q, k_pool, v_pool, slots, starts, lens, dim**-0.5)
    for b in range(q.shape[0]):
        alone = kernels.decode_attention(
            q[b : b + 1], k_pool, v_pool, slots, starts[b : b + 1], lens[b : b + 1], dim**-0.5
        )
        assert torch.equal(alone[0], together[b]), b
    expected = reference(q, k_pool, v_pool, slots, starts, lens, dim**-0.5)
    tol = 1e-5 if q.dtype == torch.float32 else 8e-3
    torch.testing.assert_close(together.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "dim"),
    [(9, 3, 64), (4, 4, 128), (8, 2, 80), (6, 1, 96), (16, 1, 32), (4, 2, 256), (5, 5, 16)],
)
def test_a_long_prompts_rows_get_the_bits_each_gets_alone(kernels, dtype, heads, kv_heads, dim):
    # 70 prompt rows over a 230-slot prefix and a second prompt of 9 rows over 60 slots: on AVX2
    # builds the runs of the 70 go through the transposed Q.K and the tiled P.V (csrc/prompt_rows.h),
    # with full and partial tiles of 6 query vectors, V blocks of 64 keys and a 256-key span crossed;
    # the 9 (too few to pay for packing) are read in place in the same call
    rows = [(0, 230 + j + 1) for j in range(70)] + [(300, 60 + j + 1) for j in range(9)]
    q, k_pool, v_pool, slots, _, _ = make_case(heads, kv_heads, dim, [5] * len(rows), dtype, seed=heads + dim)
    starts = torch.tensor([s for s, _ in rows])
    lens = torch.tensor([n for _, n in rows])
    assert_rows_get_their_bits_alone(kernels, q, k_pool, v_pool, slots, starts, lens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (4, 2, 128), (16, 1, 32)])
def test_prompts_after_a_shared_prefix_get_the_bits_each_gets_alone(kernels, dtype, heads, kv_heads, dim):
    # chains of rows after one 200-slot prefix (few-shot questions, a select's choices): on AVX2
    # builds the prefix is packed once and the chains that share it read it from there. Rows of
    # each chain, then the slots before its first row:
    g = torch.Generator().manual_seed(dim)
    free = (torch.randperm(POOL_SLOTS - 1, generator=g) + 1).tolist()
    prefix, free = free[:200], free[200:]
    chains = [
        (12, prefix),  # begins the family: packed because the next ones share with it
        (9, prefix),
        (40, prefix),  # long enough to be packed on its own
        (10, free[:150]),  # shares nothing: read in place, and begins a family of its own
        (8, prefix),  # shares nothing with that family: read in place
        (3, prefix),  # a token and two drafts: read in place
        (10, prefix[:20] + free[150:450]),  # shares too little of its keys: read in place
        (16, prefix[:100]),  # a shorter shared prefix, not a multiple of 16 slots
    ]
    indices, starts, lens = [], [], []
    for rows, before in chains:
        start = len(indices)
        indices += before + free[450 + start : 450 + start + rows]
        starts += [start] * rows
        lens += [len(before) + j + 1 for j in range(rows)]
    q = torch.randn(len(lens), heads, dim, generator=g).to(dtype)
    k_pool = torch.randn(POOL_SLOTS, kv_heads, dim, generator=g).to(dtype)
    v_pool = torch.randn(POOL_SLOTS, kv_heads, dim, generator=g).to(dtype)
    slots = torch.tensor(indices)
    assert slots.max() < POOL_SLOTS
    assert_rows_get_their_bits_alone(kernels, q, k_pool, v_pool, slots, torch.tensor(starts), torch.tensor(lens))


def test_prompt_rows_over_a_sequence_too_long_to_pack_get_the_bits_each_gets_alone(kernels):
    # 2.2M slots of bf16 K and V (over the 256 MB that prompt_rows.h may pack a call's sequences
    # into), 32 rows (enough to be packed, decode_attention.cpp's kMinPackedRows): the rows take
    # the unpacked loop (attend_rows) and still get their decode bits
    n, rows = 2_200_000, 32
    g = torch.Generator().manual_seed(7)
    k_pool = torch.randn(n + 1, 1, 16, generator=g).bfloat16()
    v_pool = torch.randn(n + 1, 1, 16, generator=g).bfloat16()
    q = torch.randn(rows, 1, 16, generator=g).bfloat16()
    slots = torch.arange(1, n + 1)
    starts = torch.zeros(rows, dtype=torch.long)
    lens = torch.arange(n - rows + 1, n + 1)
    together = kernels.decode_attention(q, k_pool, v_pool, slots, starts, lens, 0.25)
    for b in range(rows):
        alone = kernels.decode_attention(q[b : b + 1], k_pool, v_pool, slots, starts[b : b + 1], lens[b : b + 1], 0.25)
        assert torch.equal(alone[0], together[b]), b


def test_a_rows_result_does_not_depend_on_the_batch(kernels):
    lens = [50, 700, 3, 260]
    q, k_pool, v_pool, slots, starts, lens_t = make_case(9, 3, 64, lens, torch.bfloat16, seed=3)
    together = kernels.decode_attention(q, k_pool, v_pool, slots, starts, lens_t, 0.125)
    for b, n in enumerate(lens):
        alone = kernels.decode_attention(
            q[b : b + 1], k_pool, v_pool, slots[starts[b] : starts[b] + n], torch.tensor([0]), lens_t[b : b + 1], 0.125
        )
        assert torch.equal(alone[0], together[b])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (8, 2, 128), (16, 1, 32), (8, 2, 80), (5, 1, 16)])
def test_a_long_row_split_over_the_threads_gets_the_bits_of_the_whole_row(kernels, dtype, heads, kv_heads, dim):
    # alone on 2 threads, a row of over 256 slots has fewer (row, kv head) items than twice the
    # threads, and its passes run in pieces (spans of 256 keys, query heads); in a batch of 8 rows
    # each (row, kv head) is one item
    lens = [1030, 257, 600, 9, 300, 1, 1200, 256]
    q, k_pool, v_pool, slots, starts, lens_t = make_case(heads, kv_heads, dim, lens, dtype, seed=heads + dim)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        together = kernels.decode_attention(q, k_pool, v_pool, slots, starts, lens_t, dim**-0.5)
        for b in range(len(lens)):
            alone = kernels.decode_attention(
                q[b : b + 1], k_pool, v_pool, slots, starts[b : b + 1], lens_t[b : b + 1], dim**-0.5
            )
            assert torch.equal(alone[0], together[b]), b
    finally:
        torch.set_num_threads(threads)
    expected = reference(q, k_pool, v_pool, slots, starts, lens_t, dim**-0.5)
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(together.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prompt_rows_across_a_span_boundary_get_the_bits_of_decode_rows(kernels, dtype):
    # 12 prompt rows reading 250 .. 261 slots: the rows attended together cross the 256-key span
    # where P.V's running sums are added up, and each gets what a decode row of its length gets
    q, k_pool, v_pool, slots, _, _ = make_case(9, 3, 64, [300] * 12, dtype, seed=5)
    starts = torch.zeros(12, dtype=torch.long)
    lens = torch.tensor([250 + j for j in range(12)])
    together = kernels.decode_attention(q, k_pool, v_pool, slots, starts, lens, 0.125)
    for b in range(12):
        alone = kernels.decode_attention(q[b : b + 1], k_pool, v_pool, slots, starts[b : b + 1], lens[b : b + 1], 0.125)
        assert torch.equal(alone[0], together[b]), b


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "q": a["q"].half(), "k_pool": a["k_pool"].half(), "v_pool": a["v_pool"].half()},
         "bfloat16 and float32"),
        (lambda a: {**a, "q": a["q"].float()}, "share a dtype"),
        (lambda a: {**a, "kv_starts": a["kv_starts"][:1]}, "one start and length per row"),
        (lambda a: {**a, "kv_lens": a["kv_lens"] + 1000}, "non-empty range of kv_indices"),
        (lambda a: {**a, "kv_lens": a["kv_lens"] * 0}, "non-empty range of kv_indices"),
        (lambda a: {**a, "kv_indices": a["kv_indices"].int()}, "int64"),
        (lambda a: {**a, "q": a["q"][..., :48], "k_pool": a["k_pool"][..., :48].contiguous(),
                    "v_pool": a["v_pool"][..., :48].contiguous()}, "head_dim 48"),
        (lambda a: {**a, "k_pool": a["k_pool"][::2], "v_pool": a["v_pool"][::2]}, "contiguous"),
    ],
)  # fmt: skip
def test_bad_inputs_raise_clear_errors(kernels, change, message):
    q, k_pool, v_pool, slots, starts, lens = make_case(4, 2, 64, [3, 9], torch.bfloat16)
    args = dict(q=q, k_pool=k_pool, v_pool=v_pool, kv_indices=slots, kv_starts=starts, kv_lens=lens)
    args = change(args)
    with pytest.raises(RuntimeError, match=message):
        kernels.decode_attention(*args.values(), 0.125)


def test_backend_uses_the_kernel_where_it_applies(kernels):
    def backend(device="cpu", dtype=torch.bfloat16, heads=9, kv_heads=3, dim=64):
        return create_backend("torch", device, num_heads=heads, num_kv_heads=kv_heads, head_dim=dim, dtype=dtype)

    assert backend().cpu_kernels is kernels
    assert backend(dtype=torch.float32).cpu_kernels is kernels
    assert backend(dtype=torch.float16).cpu_kernels is None
    assert backend(dim=48).cpu_kernels is None
    assert backend(heads=32, kv_heads=1).cpu_kernels is None  # 32 query heads per kv head


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backend_kernel_and_padded_paths_agree_on_a_mixed_batch(kernels, dtype):
    """Decode rows of different lengths mixed with an extend over a cached prefix."""
    heads, kv_heads, dim = 9, 3, 64
    g = torch.Generator().manual_seed(5)
    pools = [
        type("Pool", (), {"k_buffers": [torch.randn(512, kv_heads, dim, generator=g).to(dtype)],
                          "v_buffers": [torch.randn(512, kv_heads, dim, generator=g).to(dtype)]})()
        for _ in range(2)
    ]  # fmt: skip
    pools[1].k_buffers[0].copy_(pools[0].k_buffers[0])
    pools[1].v_buffers[0].copy_(pools[0].v_buffers[0])
    batch = ForwardBatch.build(
        [[1], [2, 3, 4, 5, 6], [7]],
        [list(range(1, 41)), list(range(100, 160)), list(range(200, 401))],
    )
    tokens = batch.num_tokens
    q = torch.randn(tokens, heads, dim, generator=g).to(dtype)
    k = torch.randn(tokens, kv_heads, dim, generator=g).to(dtype)
    v = torch.randn(tokens, kv_heads, dim, generator=g).to(dtype)
    outs = []
    for pool, kernel_module in zip(pools, [kernels, None]):
        # prefill by SDPA in both (without extend_attention, its kernel would be decode_attention)
        backend = TorchAttentionBackend(heads, kv_heads, dim, cpu_kernels=kernel_module, choice=AttentionChoice(TORCH))
        backend.prepare(batch)
        outs.append(backend.attend(q, k, v, 0, pool))
    tol = 1e-5 if dtype == torch.float32 else 1.6e-2
    torch.testing.assert_close(outs[0], outs[1], rtol=tol, atol=tol)
    # the extend rows take the same (SDPA) path in both
    assert torch.equal(outs[0][1:6], outs[1][1:6])


def test_without_a_compiler_the_backend_falls_back_with_a_warning(tmp_path):
    env = {**os.environ, "CXX": "/bin/false", "RADIXRT_KERNEL_CACHE": str(tmp_path)}
    code = (
        "import logging; logging.basicConfig()\n"
        "from radixrt.workers.layers.attention import create_backend\n"
        "import torch\n"
        "b = create_backend('torch', 'cpu', num_heads=4, num_kv_heads=2, head_dim=64, dtype=torch.float32)\n"
        "print('kernels:', b.cpu_kernels)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "kernels: None" in done.stdout
    assert "CPU kernels unavailable" in done.stderr
