"""RMSNorm, with the residual add fused in; on the CPU one C++ op each (csrc/rms_norm.cpp)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radixrt.workers.layers import cpu_kernels
from radixrt.workers.layers.module_calls import DirectCall


class RMSNorm(DirectCall, nn.Module):
    """`x / rms(x) * weight`, computed in float32 and cast back (as in HF llama)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype: torch.dtype | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = _cpu_ops(x, self.weight)
        if ops is not None:
            return ops.rms_norm(x, self.weight, self.eps)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """`residual += x` in place, then return the norm of the new residual."""
        ops = _cpu_ops(residual, self.weight)
        if ops is not None and x.is_contiguous() and x.dtype == residual.dtype:
            return ops.add_rms_norm_(residual, x, self.weight, self.eps)
        residual.add_(x)
        return self.forward(residual)


def _cpu_ops(x: torch.Tensor, weight: torch.Tensor):
    """`torch.ops.radixrt` where its kernels take `x` and `weight`, else None (torch's own ops)."""
    if x.dim() != 2 or not x.is_contiguous() or weight.dtype != x.dtype:
        return None
    return cpu_kernels.elementwise_ops(x)
