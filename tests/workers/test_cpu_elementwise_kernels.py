"""The C++ CPU SiLU-and-multiply and rotary ops (layers/csrc/elementwise.cpp) against float64
math, and the model code's use of them."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from radixrt.workers.layers import cpu_kernels
from radixrt.workers.layers.rotary import RotaryEmbedding

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="no C++ compiler")  # fmt: skip
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module")
def ops():
    namespace = cpu_kernels.load()
    assert namespace is not None, "a C++ compiler is here, so the kernels must build"
    return namespace


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    # float32: the polynomial exp (2e-7) and the division; bf16: the output's one rounding (2^-8)
    return {"rtol": 2e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 4e-3, "atol": 1e-5}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "inter"), [(1, 1536), (33, 1536), (3, 40), (2, 7)])  # 40, 7: scalar tails
def test_silu_and_mul_matches_float64_math(ops, dtype, rows, inter):
    g = torch.Generator().manual_seed(rows * inter)
    gate_up = (4 * torch.randn(rows, 2 * inter, generator=g)).to(dtype)
    gate_up[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])  # exp's clamps and zeros
    out = ops.silu_and_mul(gate_up)
    assert out.shape == (rows, inter) and out.dtype == dtype
    gate, up = gate_up.double().split(inter, dim=-1)
    torch.testing.assert_close(out.double(), F.silu(gate) * up, **tolerance(dtype))
    assert torch.isfinite(out).all()


def test_silu_and_mul_rows_do_not_depend_on_the_batch(ops):
    gate_up = torch.randn(64, 3072).bfloat16()
    together = ops.silu_and_mul(gate_up)
    assert all(torch.equal(ops.silu_and_mul(gate_up[i : i + 1])[0], together[i]) for i in range(64))


def rotate_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x, cos, sin = x.double(), cos.double()[:, None], sin.double()[:, None]
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 40])  # 40: a half of 20, 16 lanes and a tail
def test_rotary_rotates_strided_heads_in_place_and_nothing_else(ops, dtype, head_dim):
    tokens, heads, kv_heads = 9, 4, 2
    rope = RotaryEmbedding(head_dim, 512)
    cos, sin = rope.lookup(torch.tensor([0, 1, 5, 17, 100, 200, 300, 400, 511]), dtype)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim).to(dtype)
    before = qkv.clone()
    qk = qkv[:, : (heads + kv_heads) * head_dim].view(tokens, heads + kv_heads, head_dim)
    assert ops.rotary_(qk, cos, sin).data_ptr() == qk.data_ptr()
    expected = rotate_reference(before[:, : (heads + kv_heads) * head_dim].view_as(qk), cos, sin)
    torch.testing.assert_close(qk.double(), expected, **tolerance(dtype))
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim :], before[:, (heads + kv_heads) * head_dim :])  # v
    assert torch.equal(qk[0], before[:, : (heads + kv_heads) * head_dim].view_as(qk)[0])  # position 0: identity


def test_rotary_apply_matches_the_pytorch_path(ops, monkeypatch):
    rope = RotaryEmbedding(64, 256)
    cos, sin = rope.lookup(torch.arange(30, 60), torch.float32)
    x = torch.randn(30, 6, 64)
    kernel = x.clone()
    RotaryEmbedding.apply_(kernel, cos, sin)
    monkeypatch.setattr(cpu_kernels, "elementwise_ops", lambda _: None)
    plain = x.clone()
    RotaryEmbedding.apply_(plain, cos, sin)
    torch.testing.assert_close(kernel, plain, rtol=2e-6, atol=2e-6)
    assert not torch.equal(plain, x)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ops: ops.silu_and_mul(torch.randn(2, 8).half()), "bfloat16 or float32"),
        (lambda ops: ops.silu_and_mul(torch.randn(2, 7)), "2 \\* intermediate"),
        (lambda ops: ops.silu_and_mul(torch.randn(8, 2).t()), "contiguous"),
        (lambda ops: ops.rotary_(torch.randn(3, 2, 8), torch.randn(3, 4).bfloat16(), torch.randn(3, 4)), "cos and sin"),
        (lambda ops: ops.rotary_(torch.randn(3, 2, 8), torch.randn(2, 4), torch.randn(2, 4)), "cos and sin"),
        (lambda ops: ops.rotary_(torch.randn(3, 8, 2).transpose(1, 2), torch.randn(3, 4), torch.randn(3, 4)),
         "contiguous dims"),
    ],
)  # fmt: skip
def test_bad_inputs_raise_clear_errors(ops, call, message):
    with pytest.raises(RuntimeError, match=message):
        call(ops)
