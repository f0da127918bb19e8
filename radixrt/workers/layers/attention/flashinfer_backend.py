"""FlashInfer paged attention (CUDA only; `flashinfer` is imported when the backend is built).

The KV pool is a paged cache with page size 1: a slot is a page, so a request's pages are its
`kv_indices`, every `last_page_len` is 1, and a layer's buffer `[num_slots, Hkv, D]` is viewed
as the NHD page table `[num_slots, 1, Hkv, D]`. One wrapper is planned per forward (decode
wrapper for batches of one-token decodes, prefill wrapper otherwise) and run by every layer.
Decode batches replayed from CUDA graphs (workers/decode_graphs.py) plan into a wrapper of their
batch size whose buffers the graph reads (`graph_buffers`).
"""

from __future__ import annotations

import itertools

import torch

from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers.attention.base import AttentionBackend, KVBuffers

WORKSPACE_BYTES = 128 * 1024 * 1024


class FlashInferAttentionBackend(AttentionBackend):
    """Batched prefill/decode over the slot pool with FlashInfer's paged-KV wrappers."""

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cuda",
        scale: float | None = None,
    ):
        super().__init__(num_heads, num_kv_heads, head_dim, scale)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"the flashinfer backend needs a CUDA device, got {self.device}")
        try:
            import flashinfer
        except ImportError as exc:
            raise ValueError("the flashinfer backend needs flashinfer: pip install 'radixrt[gpu]'") from exc
        self.dtype = dtype
        self._flashinfer = flashinfer
        self._workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=self.device)
        self._prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self._workspace, "NHD")
        # NOTE: tensor cores pay off for decode when several query heads share a kv head.
        self._tensor_cores = num_heads // num_kv_heads >= 4
        self._decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self._workspace, "NHD", use_tensor_cores=self._tensor_cores
        )
        self._graph_decode: dict[int, object] = {}  # batch size -> a wrapper whose buffers a graph reads
        self._graph_indices: torch.Tensor | None = None  # shared by them: one plan at a time
        self._wrapper = None
        self._out_slots: torch.Tensor | None = None

    def implementations(self) -> dict[str, str]:
        return {"decode_attention": "flashinfer", "extend_attention": "flashinfer", "shared_prefix_decode": "off"}

    def graph_buffers(self, batch_size: int, max_kv_tokens: int) -> None:
        if self._graph_indices is None or self._graph_indices.numel() < max_kv_tokens:
            self._graph_indices = torch.zeros(max_kv_tokens, dtype=torch.int32, device=self.device)
        self._graph_decode[batch_size] = self._flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self._workspace,
            "NHD",
            use_cuda_graph=True,
            use_tensor_cores=self._tensor_cores,
            paged_kv_indptr_buffer=torch.zeros(batch_size + 1, dtype=torch.int32, device=self.device),
            paged_kv_indices_buffer=self._graph_indices,
            paged_kv_last_page_len_buffer=torch.ones(batch_size, dtype=torch.int32, device=self.device),
        )

    def _decode_wrapper(self, batch_size: int, kv_tokens: int):
        """A graph's wrapper for decode batches of its size whose indices fit its buffer (the
        graph reads them there), the plain one for the rest."""
        graph = self._graph_decode.get(batch_size)
        if graph is not None and kv_tokens <= self._graph_indices.numel():
            return graph
        return self._decode

    def prepare(self, batch: ForwardBatch) -> None:
        self._out_slots = batch.out_slots
        kv_indices = batch.kv_indices.to(torch.int32)
        # NOTE: the plan reads indptr and last_page_len on the host: given there, no device sync
        kv_indptr = torch.tensor([0, *itertools.accumulate(batch.seq_lens)], dtype=torch.int32)
        last_page_len = torch.ones(batch.batch_size, dtype=torch.int32)
        common = {"q_data_type": self.dtype, "kv_data_type": self.dtype, "sm_scale": self.scale}
        heads = (self.num_heads, self.num_kv_heads, self.head_dim, 1)  # page size 1
        # NOTE: a decoding request verifying draft tokens brings several rows; the prefill wrapper's
        # causal mask over its cached prefix attends them as decode steps would
        if batch.is_decode and batch.num_tokens == batch.batch_size:
            self._wrapper = self._decode_wrapper(batch.batch_size, kv_indices.numel())
            self._wrapper.plan(kv_indptr, kv_indices, last_page_len, *heads, **common)
        else:
            qo_indptr = torch.tensor([0, *itertools.accumulate(batch.extend_lens)], dtype=torch.int32)
            self._prefill.plan(qo_indptr, kv_indptr, kv_indices, last_page_len, *heads, causal=True, **common)
            self._wrapper = self._prefill

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, kv_pool: KVBuffers
    ) -> torch.Tensor:
        assert self._wrapper is not None and self._out_slots is not None, "prepare() first"
        self.store_kv(k, v, layer_id, kv_pool, self._out_slots)
        pages = (
            kv_pool.k_buffers[layer_id].unsqueeze(1),  # [num_slots, 1, Hkv, D]
            kv_pool.v_buffers[layer_id].unsqueeze(1),
        )
        out = self._wrapper.run(q.contiguous(), pages)  # [T, H, D]
        return out.view(q.shape[0], -1)
