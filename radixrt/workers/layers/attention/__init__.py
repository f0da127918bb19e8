"""Attention backends behind one interface; `create_backend` picks one for a device."""

from __future__ import annotations

import importlib.util

import torch

from radixrt.workers.layers.attention.base import AttentionBackend, KVBuffers
from radixrt.workers.layers.attention.torch_backend import TorchAttentionBackend

BACKENDS = ("auto", "torch", "flashinfer")

__all__ = ["AttentionBackend", "KVBuffers", "TorchAttentionBackend", "create_backend"]


def create_backend(
    name: str,
    device: torch.device | str,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    scale: float | None = None,
) -> AttentionBackend:
    """Build backend `name`; "auto" is flashinfer on CUDA when importable, else torch."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {BACKENDS}")
    device = torch.device(device)
    if name == "auto":
        usable = device.type == "cuda" and importlib.util.find_spec("flashinfer") is not None
        name = "flashinfer" if usable else "torch"
    if name == "torch":
        kernels, extend_kernel = None, False
        if device.type == "cpu" and dtype in (torch.bfloat16, torch.float32):
            from radixrt.workers.layers import cpu_kernels

            if cpu_kernels.supports_decode(head_dim, num_heads, num_kv_heads):
                kernels = cpu_kernels.load()
                extend_kernel = cpu_kernels.supports_extend(head_dim, dtype)
        return TorchAttentionBackend(num_heads, num_kv_heads, head_dim, scale, kernels, extend_kernel)
    from radixrt.workers.layers.attention import flashinfer_backend

    return flashinfer_backend.FlashInferAttentionBackend(num_heads, num_kv_heads, head_dim, dtype, device, scale)
