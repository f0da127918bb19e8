"""The C++ CPU RMSNorm ops (layers/csrc/rms_norm.cpp) against float64 math and torch's own add,
and RMSNorm's use of them."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from radixrt.workers.layers import cpu_kernels
from radixrt.workers.layers.norm import RMSNorm

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="no C++ compiler")  # fmt: skip
EPS = 1e-5


@pytest.fixture(scope="module")
def ops():
    namespace = cpu_kernels.load()
    assert namespace is not None, "a C++ compiler is here, so the kernels must build"
    return namespace


def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    x64 = x.double()
    return x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + EPS) * weight.double()


def inputs(rows: int, hidden: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(rows, hidden, generator=g)).to(dtype)
    weight = (1 + 0.3 * torch.randn(hidden, generator=g)).to(dtype)
    return x, weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "hidden"), [(1, 576), (7, 64), (300, 576), (3, 17)])
def test_rms_norm_matches_float64_math_and_leaves_its_input(ops, dtype, rows, hidden):
    x, weight = inputs(rows, hidden, dtype)
    before = x.clone()
    out = ops.rms_norm(x, weight, EPS)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(x, before)
    tol = 1e-6 if dtype == torch.float32 else 8e-3  # bf16: the output's one rounding
    torch.testing.assert_close(out.double(), reference(x, weight), rtol=tol, atol=tol)
    # torch's own kernel rounds the same float32 value: at most one bf16 step apart
    torch.testing.assert_close(out, F.rms_norm(x, (hidden,), weight, EPS), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_updates_the_residual_exactly_as_add_does(ops, dtype):
    residual, weight = inputs(40, 576, dtype, seed=1)
    x, _ = inputs(40, 576, dtype, seed=2)
    expected_residual = residual + x
    out = ops.add_rms_norm_(residual, x, weight, EPS)
    assert torch.equal(residual, expected_residual)
    tol = 1e-6 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(out.double(), reference(expected_residual, weight), rtol=tol, atol=tol)


def test_a_rows_norm_does_not_depend_on_the_batch(ops):
    x, weight = inputs(64, 576, torch.bfloat16, seed=3)
    together = ops.rms_norm(x, weight, EPS)
    assert all(torch.equal(ops.rms_norm(x[i : i + 1], weight, EPS)[0], together[i]) for i in range(64))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x, w: (x.half(), w.half()), "bfloat16 and float32"),
        (lambda x, w: (x, w.float()), "share a dtype"),
        (lambda x, w: (x.t(), w), "contiguous"),
        (lambda x, w: (x, w[:-1]), "weight must be"),
        (lambda x, w: (x[None], w), r"\[rows, hidden\]"),
    ],
)
def test_bad_inputs_raise_clear_errors(ops, make, message):
    x, weight = make(*inputs(4, 64, torch.bfloat16))
    with pytest.raises(RuntimeError, match=message):
        ops.rms_norm(x, weight, EPS)


def test_rmsnorm_module_takes_the_kernel_and_falls_back_for_other_inputs(ops):
    norm = RMSNorm(64, EPS, torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(64))
    x, _ = inputs(5, 64, torch.bfloat16)
    assert torch.equal(norm(x), ops.rms_norm(x, norm.weight, EPS))
    strided = torch.cat([x, x], dim=1)[:, :64]  # not contiguous: torch's kernel
    torch.testing.assert_close(norm(strided), F.rms_norm(strided, (64,), norm.weight, EPS))
    with warnings.catch_warnings():  # torch's own kernel warns that it cannot fuse mixed dtypes
        warnings.simplefilter("ignore", UserWarning)
        assert torch.equal(norm(x.float()), F.rms_norm(x.float(), (64,), norm.weight, EPS))  # weight of another dtype
    residual, y = x.clone(), 0.5 * x
    out = norm.add_and_norm(y, residual)
    assert torch.equal(residual, x + y)
    assert torch.equal(out, ops.rms_norm(x + y, norm.weight, EPS))
