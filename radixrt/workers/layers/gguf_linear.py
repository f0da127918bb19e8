"""Linears on GGUF's quantized tensors as stored (`--quantization gguf`): Q8_0 and Q4_1.

Both formats quantize each output channel in blocks of 32 weights along K, each with float16
scales: Q8_0 w = d * q (q int8), Q4_1 w = d * q + m (q in 0..15). Activations are quantized per 32
values on the fly (layers/quantization.py), so a block's products sum exactly in int32:
    Q8_0: y += sx * d * sum(q X)        the int8 kernel with per-group weight scales
    Q4_1: y += sx * (d * sum(q X) + m * sum(X))        csrc/linear_q4_1.cpp, 0.625 bytes a weight
`reference_group_linear` computes the same in torch (float64, on the dequantized weights), for
machines without the C++ kernels and for the tests.
"""

from __future__ import annotations

import gguf
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radixrt.workers.layers import cpu_kernels, fused_decode
from radixrt.workers.layers.module_calls import DirectCall
from radixrt.workers.layers.quantization import GROUP, quantize_rows

Q8_0, Q4_1 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1
SERVED_TYPES = (Q8_0, Q4_1)
BLOCK = 16  # output columns per packed block (csrc/linear_tiles.h)


def row_bytes(tensor_type: gguf.GGMLQuantizationType, k: int) -> int:
    """Bytes of one row of `k` weights; K must be whole GGUF blocks."""
    block, size = gguf.GGML_QUANT_SIZES[tensor_type]
    if k <= 0 or k % block:
        raise ValueError(f"{tensor_type.name} rows hold whole blocks of {block} weights; K = {k} is not a multiple")
    return k // block * size


def dequantize(tensor_type: gguf.GGMLQuantizationType, raw: torch.Tensor) -> torch.Tensor:
    """[N, row bytes] uint8 -> [N, K] float32, as llama.cpp computes the weights."""
    return torch.from_numpy(np.array(gguf.quants.dequantize(raw.numpy(), tensor_type), dtype=np.float32))


def split_q8_0(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 rows -> (q [N, K] int8, d [N, K/32] float16)."""
    blocks = raw.view(raw.shape[0], -1, 2 + GROUP)  # each: float16 d, then 32 int8
    d = blocks[..., :2].contiguous().view(torch.float16).squeeze(-1)
    return blocks[..., 2:].contiguous().view(torch.int8).reshape(raw.shape[0], -1), d


def blocked_group_scales(d: torch.Tensor) -> torch.Tensor:
    """[N, G] -> [N/16, G, 16]: a 16-column block's scales for one group side by side (zero padded)."""
    n, groups = d.shape
    padded = F.pad(d, (0, 0, 0, -n % BLOCK))
    return padded.view(-1, BLOCK, groups).transpose(1, 2).contiguous()


def reference_group_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """What the kernels compute, in float64: each group of 32 activations rounded to int8 with its
    own scale, times the (dequantized) weights; K is a multiple of 32."""
    xq, sx = quantize_rows(x)  # [M, G, 32], [M, G]
    wg = weight.double().view(weight.shape[0], -1, GROUP)  # [N, G, 32]
    y = torch.einsum("mgk,ngk,mg->mn", xq.double(), wg, sx.double())
    return (y if bias is None else y + bias.double()).to(x.dtype)


class GGUFLinear(DirectCall, nn.Module):
    """y = x @ W.T + b with W a GGUF Q8_0 or Q4_1 tensor, `raw` its [N, row bytes] uint8 rows."""

    def __init__(
        self,
        tensor_type: gguf.GGMLQuantizationType,
        raw: torch.Tensor,
        in_features: int,
        bias: torch.Tensor | None,
        backend: str,
    ):
        super().__init__()
        if tensor_type not in SERVED_TYPES:
            raise ValueError(f"GGUF {tensor_type.name} tensors are not served quantized (only Q8_0 and Q4_1)")
        expected = row_bytes(tensor_type, in_features)
        if raw.dtype != torch.uint8 or raw.dim() != 2 or raw.shape[1] != expected:
            raise ValueError(
                f"{tensor_type.name} rows of K = {in_features} are [N, {expected}] uint8, got {tuple(raw.shape)}"
            )
        self.tensor_type, self.backend = tensor_type, backend
        self.out_features, self.in_features = raw.shape[0], in_features
        self.bias = None if bias is None else bias.detach()
        if backend != "cpu_kernels":
            self.weight = dequantize(tensor_type, raw)
        elif tensor_type == Q4_1:
            self.packed = cpu_kernels.load().pack_q4_1_weight(raw.contiguous(), in_features)
        else:
            q, d = split_q8_0(raw.contiguous())
            self.packed = cpu_kernels.load().pack_int8_weight(q)
            self.group_scale = blocked_group_scales(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend != "cpu_kernels":
            return reference_group_linear(x, self.weight, self.bias)
        ops, n, k = cpu_kernels.load(), self.out_features, self.in_features
        if self.tensor_type == Q4_1:
            return ops.q4_1_linear(x, self.packed, n, k, self.bias)
        return ops.int8_linear(x, self.packed, None, n, k, self.bias, self.group_scale)

    def fused_linear(self, rows: int, invariant: bool) -> fused_decode.FusedLinear | None:
        if self.backend != "cpu_kernels":
            return None
        n, k = self.out_features, self.in_features
        if self.tensor_type == Q4_1:
            return fused_decode.Q4_1, n, k, (self.packed, None, self.bias, None)
        return fused_decode.INT8, n, k, (self.packed, None, self.bias, self.group_scale)

    def extra_repr(self) -> str:
        return f"{self.tensor_type.name}, in_features={self.in_features}, out_features={self.out_features}"
