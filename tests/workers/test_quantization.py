"""int8 linears: the quantizer, the C++ int8 linear against the torch reference (the same math)
and against float64 on the dequantized weights, row invariance, and the embedded model's
perplexity on a fixed text within 2% of bf16 (with int8, and with its GGUF tensors as stored)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import radixrt
from radixrt.radix_cache.pool import KVPool
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers import cpu_kernels
from radixrt.workers.layers.quantization import GROUP, Int8Linear, dequantize, quantize_int8, quantize_rows
from radixrt.workers.model_runner import ModelRunner

TEXT = Path(__file__).parent / "data" / "perplexity.txt"


def test_quantize_int8_rounds_each_row_to_its_own_scale():
    w = torch.randn(40, 77) * torch.logspace(-3, 1, 40)[:, None]
    w[3] = 0
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scale.shape == (40,)
    assert torch.equal(q.abs().amax(1)[torch.arange(40) != 3], torch.full((39,), 127, dtype=torch.int8))
    assert (dequantize(q, scale) - w).abs().le(scale[:, None] / 2 + 1e-12).all()
    assert torch.equal(dequantize(q, scale)[3], torch.zeros(77))


def test_activations_are_quantized_per_group_along_k():
    x = torch.randn(3, 150) * torch.linspace(0.01, 10, 150)
    xq, sx = quantize_rows(x)
    groups = -(-150 // GROUP)
    assert xq.shape == (3, groups, GROUP) and sx.shape == (3, groups) and xq.abs().max() <= 127
    padded = torch.nn.functional.pad(x, (0, groups * GROUP - 150)).view(3, groups, GROUP)
    assert ((xq * sx[..., None]) - padded).abs().le(sx[..., None] / 2 + 1e-6).all()
    assert sx[:, 0].max() < sx[:, -1].min()  # each group its own scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,k", [(16, 32), (33, 77), (100, 2), (576, 1536)])
@pytest.mark.parametrize("bias", [False, True])
def test_the_int8_kernel_matches_the_torch_reference_and_float64(dtype, n, k, bias):
    gen = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    lin, ref = Int8Linear(w.to(dtype), b, "cpu_kernels"), Int8Linear(w.to(dtype), b, "torch")
    ref_w = dequantize(*quantize_int8(w.to(dtype))).double()
    for m in (1, 3, 8, 9, 40):
        x = torch.randn(m, k, generator=gen).to(dtype)
        got = lin(x)
        assert got.dtype == dtype and got.shape == (m, n)
        # the same integers and scales: the two differ only in float32 rounding order (and bf16's last bit)
        torch.testing.assert_close(got, ref(x), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-4)
        # and activation rounding keeps it near the unquantized product with the int8 weights
        expected = F.linear(x.double(), ref_w, None if b is None else b.double())
        assert (got.double() - expected).abs().max().item() <= 0.02 * expected.abs().max().item() + 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_an_int8_rows_bits_do_not_depend_on_the_batch_or_the_threads(dtype):
    gen = torch.Generator().manual_seed(3)
    lin = Int8Linear(torch.randn(200, 96, generator=gen).to(dtype), None, "cpu_kernels")
    x = torch.randn(70, 96, generator=gen).to(dtype)
    whole = lin(x)
    for i in (0, 8, 69):
        assert torch.equal(lin(x[i : i + 1])[0], whole[i])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(lin(x), whole)
    finally:
        torch.set_num_threads(threads)


def test_the_torch_reference_agrees_with_the_kernel():
    w, x = torch.randn(48, 64), torch.randn(5, 64)
    torch.testing.assert_close(
        Int8Linear(w, None, "torch")(x), Int8Linear(w, None, "cpu_kernels")(x), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda x, s: (x[:, :5], s), "x has 5 columns"),
        (lambda x, s: (x, s[:3]), "scale must be 48"),
        (lambda x, s: (x.half(), s), "bfloat16 or float32"),
    ],
)
def test_the_int8_kernel_rejects_bad_inputs(change, message):
    lin = Int8Linear(torch.randn(48, 64), None, "cpu_kernels")
    x, scale = change(torch.randn(2, 64), lin.scale)
    with pytest.raises(RuntimeError, match=message):
        cpu_kernels.load().int8_linear(x, lin.q, scale, 48, 64, None)


def perplexity(runner: ModelRunner, ids: list[int]) -> float:
    pool = KVPool(len(ids) + 1, *runner.kv_shape(), dtype=runner.dtype)
    batch = ForwardBatch.build([ids], [list(range(1, len(ids) + 1))], [list(range(len(ids) - 1))])
    logprobs = torch.log_softmax(runner.forward(batch, pool).double(), dim=-1)
    nll = -logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean().item()
    return math.exp(nll)


def test_quantized_perplexity_of_the_embedded_model_is_within_2_percent_of_bf16(embedded_model_dir):
    """int8 re-quantizes the (Q4_1-dequantized) weights per channel; gguf serves the file's own
    Q4_1 and Q8_0 tensors, so only its activation rounding differs from bf16 of the same file."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(embedded_model_dir)(TEXT.read_text())["input_ids"]
    assert len(ids) > 300
    ppl = {
        q: perplexity(ModelRunner(embedded_model_dir, dtype="bfloat16", device="cpu", quantization=q), ids)
        for q in ("none", "int8", "gguf")
    }
    assert 1 < ppl["none"] < 100  # the text is plain English: the model predicts it
    assert abs(ppl["int8"] / ppl["none"] - 1) < 0.02, ppl
    assert abs(ppl["gguf"] / ppl["none"] - 1) < 0.02, ppl


def test_the_engine_serves_int8_and_says_so():
    with radixrt.Engine(model="default", dtype="bfloat16", quantization="int8", kv_slots=1024) as engine:
        out = engine.generate("The capital of France is", {"temperature": 0, "max_new_tokens": 6})
        assert out["meta_info"]["completion_tokens"] > 0
        assert engine.stats()["kernels"]["linear"] == "int8 (cpu_kernels)"
    with pytest.raises(ValueError, match="quantization must be one of none, int8, gguf"):
        radixrt.Engine(model="default", quantization="int4")
