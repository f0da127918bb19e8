"""The implementations a CPU linear `y = x @ W.T + b` can run on, each with its own weight layout.

  aten     `F.linear` on the plain weight with oneDNN switched off: ATen's own kernels (its
           vectorised GEMV is the fastest one-row path on some CPUs, 3x slower than oneDNN on others)
  onednn   oneDNN with the weight reordered once into its blocked layout (bf16): `F.linear` would
           repack a plain weight on every call, which costs as much as a small-M matmul
  radixrt  our kernel (csrc/linear.cpp): every output element reduced in one fixed order, so a
           row's bits never depend on M, on the other rows or on the threads

None is fastest everywhere; `kernel_tuning` times them on this machine and `cpu_linear` runs the
winner for each M. Which of them keep a row's bits whatever the batch is also measured there: it
is a fact of the CPU and library (oneDNN's AMX kernels change with M), not of the name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from radixrt.workers.layers import cpu_kernels

Run = Callable[[torch.Tensor, Any, torch.Tensor | None], torch.Tensor]


def _aten_prepare(weight: torch.Tensor) -> Any:
    return weight


def _aten_run(x: torch.Tensor, weight: Any, bias: torch.Tensor | None) -> torch.Tensor:
    # NOTE: torch.backends.mkldnn.flags() would also reset TF32 settings and warn on every call
    enabled = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        return F.linear(x, weight, bias)
    finally:
        torch._C._set_mkldnn_enabled(enabled)


def _onednn_prepare(weight: torch.Tensor) -> Any:
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def _onednn_run(x: torch.Tensor, packed: Any, bias: torch.Tensor | None) -> torch.Tensor:
    if x.shape[0] == 1:
        # NOTE: oneDNN's one-row kernel splits the reduction differently from its multi-row ones;
        # as two rows, a row can get what it gets inside a larger batch (measured, not assumed)
        return torch.ops.mkldnn._linear_pointwise(x.repeat(2, 1), packed, bias, "none", [], "")[:1]
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _radixrt_prepare(weight: torch.Tensor) -> Any:
    return (cpu_kernels.load().pack_linear_weight(weight), *weight.shape)


def _radixrt_run(x: torch.Tensor, state: Any, bias: torch.Tensor | None) -> torch.Tensor:
    packed, n, k = state
    return cpu_kernels.load().packed_linear(x, packed, n, k, bias)


PREPARE: dict[str, Callable[[torch.Tensor], Any]] = {
    "aten": _aten_prepare,
    "onednn": _onednn_prepare,
    "radixrt": _radixrt_prepare,
}
RUN: dict[str, Run] = {"aten": _aten_run, "onednn": _onednn_run, "radixrt": _radixrt_run}


def _onednn_bf16_here() -> bool:
    """oneDNN's bf16 linear needs AVX512BW/VL/DQ, AVX-NE-CONVERT or AMX: on an AVX2-only CPU its
    weight reorder raises instead."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe()) if probe is not None else True


def available(dtype: torch.dtype) -> list[str]:
    """The candidates that run a CPU linear in `dtype` here."""
    names = ["aten"]
    if (
        dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and _onednn_bf16_here()
    ):
        names.append("onednn")
    if dtype in (torch.bfloat16, torch.float32) and cpu_kernels.load() is not None:
        names.append("radixrt")
    return names
