"""The attention backend interface.

A backend sees each forward twice: `prepare(batch)` once, where it turns the batch's
indptr/indices into whatever its kernels want, then `attend(...)` once per layer, which writes
the new tokens' K/V into the pool and attends every new token over its request's sequence
(cached prefix + new tokens, causal).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple, Protocol

import torch

from radixrt.workers.forward_batch import ForwardBatch


class KVBuffers(Protocol):
    """What attention needs from a KV pool: per-layer `[num_slots, n_kv_heads, head_dim]`."""

    k_buffers: list[torch.Tensor]
    v_buffers: list[torch.Tensor]


class DecodeKernelArgs(NamedTuple):
    """A forward whose rows all decode on the C++ kernels: what `decode_layers` needs to store each
    row's K/V and attend it (layers/fused_decode.py). Row r attends over
    kv_indices[starts[r] : starts[r] + lens[r]]."""

    out_slots: torch.Tensor
    kv_indices: torch.Tensor
    starts: torch.Tensor
    lens: torch.Tensor
    scale: float
    kernel: int  # DECODE, TILED (rounds as extend_attention does) or SHARED_PREFIX (csrc/decode_layer.cpp)
    shared_min_requests: int  # shared_prefix_decode's threshold


# DecodeKernelArgs.kernel: decode_attention, tiled_decode_attention, shared_prefix_decode
DECODE, TILED, SHARED_PREFIX = range(3)


class AttentionBackend(ABC):
    """Paged (page size 1) causal attention over a KV pool."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float | None = None):
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale if scale is not None else head_dim**-0.5

    @abstractmethod
    def prepare(self, batch: ForwardBatch) -> None:
        """Called once per forward, before any layer's `attend`."""

    @abstractmethod
    def attend(
        self,
        q: torch.Tensor,  # [T, num_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        layer_id: int,
        kv_pool: KVBuffers,
    ) -> torch.Tensor:
        """Store k, v at the batch's `out_slots` of layer `layer_id`; return `[T, num_heads * head_dim]`."""

    @abstractmethod
    def implementations(self) -> dict[str, str]:
        """What runs `decode_attention`, `extend_attention` and `shared_prefix_decode`: "cpu_kernels"
        (radixrt's C++), "torch", "flashinfer", or "off" for an optional kernel this backend never uses."""

    def graph_buffers(self, batch_size: int, max_kv_tokens: int) -> None:
        """Before a decode graph of `batch_size` rows is captured (workers/decode_graphs.py): from
        now on, `prepare` of a decode batch of that size writes its plan only into buffers made here
        for at most `max_kv_tokens` K/V rows, since a replayed graph reads the addresses it was
        captured with. Backends whose `prepare` keeps nothing on the device need none."""

    def decode_kernel_args(self) -> DecodeKernelArgs | None:
        """After `prepare`: the prepared batch's decode rows for `decode_layers`, where every row
        decodes on the C++ decode kernels; None otherwise (and for backends without them)."""
        return None

    @staticmethod
    def store_kv(k: torch.Tensor, v: torch.Tensor, layer_id: int, kv_pool: KVBuffers, out_slots: torch.Tensor) -> None:
        kv_pool.k_buffers[layer_id].index_copy_(0, out_slots, k)
        kv_pool.v_buffers[layer_id].index_copy_(0, out_slots, v)
