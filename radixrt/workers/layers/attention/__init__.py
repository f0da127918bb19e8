"""Attention backends behind one interface; `create_backend` picks one for a device."""

from __future__ import annotations

import importlib.util

import torch

from radixrt import envs
from radixrt.workers.layers.attention.base import AttentionBackend, KVBuffers
from radixrt.workers.layers.attention.torch_backend import TORCH, AttentionChoice, TorchAttentionBackend

BACKENDS = ("auto", "torch", "flashinfer")

__all__ = ["AttentionBackend", "AttentionChoice", "KVBuffers", "TorchAttentionBackend", "create_backend"]


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
    """Build backend `name`; "auto" is flashinfer on CUDA (an error where it is not installed:
    a GPU worker without it would run eagerly on torch's SDPA, a fraction of its speed), torch on
    the CPU. On the CPU with radixrt's kernels, what the torch backend runs was measured on this
    CPU (attention_tuning); with RADIXRT_KERNELS=torch there are no kernels and nothing is measured."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {BACKENDS}")
    device = torch.device(device)
    if name == "auto":
        name = "flashinfer" if device.type == "cuda" else "torch"
        if name == "flashinfer" and importlib.util.find_spec("flashinfer") is None:
            raise ValueError(
                "CUDA needs flashinfer: pip install 'radixrt[gpu]' (or --attention-backend torch, without CUDA graphs)"
            )
    if name == "torch":
        kernels, extend_kernel, choice = None, False, None
        if device.type == "cpu" and dtype in (torch.bfloat16, torch.float32):
            from radixrt.workers.layers import attention_tuning, cpu_kernels

            if cpu_kernels.supports_decode(head_dim, num_heads, num_kv_heads) and not envs.torch_reference_only():
                kernels = cpu_kernels.load()
                extend_kernel = cpu_kernels.supports_extend(head_dim, dtype)
            if kernels is not None:
                choice, wrong = attention_tuning.plan(num_heads, num_kv_heads, head_dim, dtype, kernels, extend_kernel)
                # a kernel that gave wrong results here serves no forward, batch-invariant ones included;
                # without extend_attention, prompt rows run decode_attention
                if "decode" in wrong or ("extend" in wrong and not extend_kernel):  # then none is trusted
                    why = {op: text for op, text in choice.why.items() if text == attention_tuning.WRONG}
                    kernels, extend_kernel, choice = None, False, AttentionChoice(TORCH, TORCH, why)
                extend_kernel = extend_kernel and "extend" not in wrong
        return TorchAttentionBackend(num_heads, num_kv_heads, head_dim, scale, kernels, extend_kernel, choice)
    from radixrt.workers.layers.attention import flashinfer_backend

    return flashinfer_backend.FlashInferAttentionBackend(num_heads, num_kv_heads, head_dim, dtype, device, scale)
