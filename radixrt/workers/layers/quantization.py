"""int8 linears (`--quantization int8`): weights stored as int8, W ~ Q * scale with one symmetric
scale per output channel; activations, outputs and everything else stay in the model's dtype.

Which format does what: `int8` quantizes whatever the model folder holds (bf16/float weights) at
load, per output channel, and runs on CPU and CUDA. `gguf` (layers/gguf_linear.py) serves a GGUF
file's Q8_0 and Q4_1 tensors as stored, per 32 weights with their own scales (Q4_1 also a minimum):
no re-quantization and, for Q4_1, 0.625 bytes a weight; CPU only. Both quantize activations the
same way (`quantize_rows`).

At batch 1 a decode step reads every weight once, so its time is weight bytes / memory bandwidth:
int8 halves the bytes of bf16. On CPU the C++ `int8_linear` (csrc/linear_int8.cpp) runs it: each
row of x is quantized on the fly to int8, one scale per 32 values, and the products are summed
exactly in int32 (VNNI), so a row's result depends only on that row (int8 forwards are
batch-invariant);
`reference_int8_linear` computes the same in torch. On CUDA torch's `_weight_int8pack_mm` (weights
only in int8). Widening int8 weights to bf16 in the kernel instead cost more than the bytes saved.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from radixrt.workers.layers import cpu_kernels, fused_decode
from radixrt.workers.layers.module_calls import DirectCall

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "int8", "gguf")
QMAX = 127
GROUP = 32  # activation values sharing a scale (csrc/linear_int8.cpp)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q [N, K] int8, scale [N] float32) with W ~ Q * scale[:, None], rounded to nearest."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale.contiguous()


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale[:, None]


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(X [M, G, GROUP] int8-valued float32, sx [M, G]) with x ~ X * sx per group of GROUP values
    along K (the last group zero padded), rounded as the C++ kernel rounds them."""
    m, k = x.shape
    groups = -(-k // GROUP)
    xf = F.pad(x.float(), (0, groups * GROUP - k)).view(m, groups, GROUP)
    amax = xf.abs().amax(dim=2)
    sx = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    return torch.round(xf * (1 / sx)[..., None]).clamp_(-QMAX, QMAX), sx


def reference_int8_linear(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """What `int8_linear` computes, in torch: exact group sums, scaled and added in float32."""
    xq, sx = quantize_rows(x)
    groups = xq.shape[1]
    qg = F.pad(q.double(), (0, groups * GROUP - q.shape[1])).view(q.shape[0], groups, GROUP)
    sums = torch.einsum("mgk,ngk->mgn", xq.double(), qg).float()  # exact integers
    y = torch.zeros(x.shape[0], q.shape[0])
    for g in range(groups):
        y = y + sums[:, g] * sx[:, g, None]
    y = y * scale[None, :]
    return (y if bias is None else y + bias.float()).to(x.dtype)


def int8_backend(device: torch.device) -> str:
    """What runs int8 linears on `device`: "cpu_kernels", "torch_int8pack" (CUDA) or "torch" (reference)."""
    if device.type == "cuda":
        if not hasattr(torch, "_weight_int8pack_mm"):
            raise ValueError(
                f"--quantization int8 on CUDA needs torch._weight_int8pack_mm, which torch {torch.__version__} lacks"
            )
        return "torch_int8pack"
    return "cpu_kernels" if cpu_kernels.load() is not None else "torch"


class Int8Linear(DirectCall, nn.Module):
    """y = (x @ Q.T) * scale + b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, backend: str):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.backend = backend
        self.q, self.scale = quantize_int8(weight)
        self.bias = None if bias is None else bias.detach()
        if backend == "cpu_kernels":
            self.q = cpu_kernels.load().pack_int8_weight(self.q)
        elif backend == "torch_int8pack":
            self.q, self.scale = self.q.to(weight.device), self.scale.to(weight.device, weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "cpu_kernels":
            ops = cpu_kernels.load()
            return ops.int8_linear(x, self.q, self.scale, self.out_features, self.in_features, self.bias)
        if self.backend == "torch_int8pack":
            y = torch._weight_int8pack_mm(x, self.q, self.scale)
            return y if self.bias is None else y + self.bias
        return reference_int8_linear(x, self.q, self.scale, self.bias)

    def fused_linear(self, rows: int, invariant: bool) -> fused_decode.FusedLinear | None:
        if self.backend != "cpu_kernels":
            return None
        return fused_decode.INT8, self.out_features, self.in_features, (self.q, self.scale, self.bias, None)


def quantize_linears(model: nn.Module, device: torch.device) -> str:
    """Replace every nn.Linear under `model` by an Int8Linear; returns the backend used."""
    backend = int8_backend(device)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child.weight, child.bias, backend))
    return backend
