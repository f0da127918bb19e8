"""GGUF Q8_0 and Q4_1 linears served as stored: the C++ kernels against the torch reference (the
same math) and against float64 on the dequantized weights, on blocks made by the `gguf` package's
own quantizers; row, batch and thread invariance; shapes GGUF cannot hold refused clearly."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from radixrt.workers.layers import cpu_kernels
from radixrt.workers.layers.gguf_linear import Q4_1, Q8_0, GGUFLinear, dequantize, reference_group_linear

TYPES = [Q8_0, Q4_1]


def quantized(tensor_type, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw GGUF rows, their float32 weights) for random weights, some rows far from zero-centred
    (Q4_1's minimum matters) and one all zero."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) + torch.randn(n, 1, generator=gen) * 2
    w[n // 2] = 0
    raw = torch.from_numpy(gguf.quants.quantize(w.numpy(), tensor_type))
    return raw, torch.from_numpy(np.array(gguf.quants.dequantize(raw.numpy(), tensor_type)))


@pytest.mark.parametrize("tensor_type", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,k", [(16, 32), (33, 96), (100, 64), (576, 1536)])
@pytest.mark.parametrize("bias", [False, True])
def test_the_gguf_kernels_match_the_torch_reference_and_float64(tensor_type, dtype, n, k, bias):
    raw, w = quantized(tensor_type, n, k, seed=n + k)
    gen = torch.Generator().manual_seed(n * k)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    lin = GGUFLinear(tensor_type, raw, k, b, "cpu_kernels")
    ref = GGUFLinear(tensor_type, raw, k, b, "torch")
    assert torch.equal(ref.weight, dequantize(tensor_type, raw))
    for m in (1, 3, 8, 9, 40):
        x = torch.randn(m, k, generator=gen).to(dtype)
        got = lin(x)
        assert got.dtype == dtype and got.shape == (m, n)
        # the same integers and scales: the two differ only in float32 rounding order (and bf16's last bit)
        torch.testing.assert_close(got, ref(x), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-4)
        # and rounding the activations keeps it near the exact product with the stored weights
        expected = F.linear(x.double(), w.double(), None if b is None else b.double())
        assert (got.double() - expected).abs().max().item() <= 0.02 * expected.abs().max().item() + 1e-3


@pytest.mark.parametrize("tensor_type", TYPES, ids=lambda t: t.name)
def test_a_gguf_rows_bits_do_not_depend_on_the_batch_or_the_threads(tensor_type):
    raw, _ = quantized(tensor_type, 200, 96, seed=3)
    lin = GGUFLinear(tensor_type, raw, 96, None, "cpu_kernels")
    x = torch.randn(70, 96, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    whole = lin(x)
    for i in (0, 8, 69):
        assert torch.equal(lin(x[i : i + 1])[0], whole[i])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(lin(x), whole)
    finally:
        torch.set_num_threads(threads)


def test_the_reference_rounds_activations_as_the_kernel_does():
    # one activation group far larger than the rest: per-group scales keep the small ones exact
    raw, w = quantized(Q8_0, 16, 64, seed=5)
    x = torch.cat([torch.full((1, 32), 100.0), torch.full((1, 32), 0.01)], dim=1)
    exact = x.double() @ w.double().T
    for backend in ("torch", "cpu_kernels"):
        torch.testing.assert_close(GGUFLinear(Q8_0, raw, 64, None, backend)(x).double(), exact, rtol=1e-5, atol=1e-4)
    assert reference_group_linear(x, w, None).dtype == torch.float32


@pytest.mark.parametrize("tensor_type", TYPES, ids=lambda t: t.name)
def test_rows_that_are_not_whole_gguf_blocks_are_refused(tensor_type):
    raw, _ = quantized(tensor_type, 16, 64, seed=6)
    with pytest.raises(ValueError, match="K = 40 is not a multiple"):
        GGUFLinear(tensor_type, raw, 40, None, "cpu_kernels")
    with pytest.raises(ValueError, match=r"rows of K = 96 are \[N, \d+\] uint8"):
        GGUFLinear(tensor_type, raw, 96, None, "cpu_kernels")
    with pytest.raises(RuntimeError, match="multiple of 32"):
        cpu_kernels.load().pack_q4_1_weight(raw[:, :20], 20)


def test_other_gguf_types_are_not_served_quantized():
    raw = torch.from_numpy(gguf.quants.quantize(np.ones((16, 32), np.float32), gguf.GGMLQuantizationType.Q5_0))
    with pytest.raises(ValueError, match="Q5_0 tensors are not served quantized"):
        GGUFLinear(gguf.GGMLQuantizationType.Q5_0, raw, 32, None, "cpu_kernels")


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda ops, lin, x: ops.q4_1_linear(x[:, :32], lin.packed, 48, 64, None), "x has 32 columns"),
        (lambda ops, lin, x: ops.q4_1_linear(x.half(), lin.packed, 48, 64, None), "bfloat16 or float32"),
        (lambda ops, lin, x: ops.q4_1_linear(x, lin.packed, 64, 64, None), "do not hold 64 x 64"),
        (lambda ops, lin, x: ops.int8_linear(x, lin.packed, None, 48, 64, None, None), "do not hold 48 x 64"),
    ],
)
def test_the_q4_1_kernel_rejects_bad_inputs(call, message):
    raw, _ = quantized(Q4_1, 48, 64, seed=7)
    lin = GGUFLinear(Q4_1, raw, 64, None, "cpu_kernels")
    with pytest.raises(RuntimeError, match=message):
        call(cpu_kernels.load(), lin, torch.randn(2, 64))


def test_the_int8_kernel_takes_one_kind_of_weight_scale():
    raw, _ = quantized(Q8_0, 48, 64, seed=8)
    lin = GGUFLinear(Q8_0, raw, 64, None, "cpu_kernels")
    ops, x = cpu_kernels.load(), torch.randn(2, 64)
    with pytest.raises(RuntimeError, match="either scale or group_scale"):
        ops.int8_linear(x, lin.packed, torch.ones(48), 48, 64, None, lin.group_scale)
    with pytest.raises(RuntimeError, match="group_scale must be contiguous float16"):
        ops.int8_linear(x, lin.packed, None, 48, 64, None, lin.group_scale.float())
