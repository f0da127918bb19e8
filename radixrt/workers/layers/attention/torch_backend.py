"""Attention in PyTorch (CPU and GPU), with our C++ kernels on the CPU.

Decoding requests (the token they just sampled, plus any draft tokens being verified: each row
then attends as a decode step of its token would) are attended together: on the CPU by
`decode_attention` (layers/csrc/), which reads each request's K/V rows in place from the pool; in
bf16 on AVX512-BF16 CPUs by `tiled_decode_attention`, which rounds exactly as `extend_attention`
does (so a generated token's K/V equals what a prefill of it stores, and a cache hit on generated
text changes no output) and is as fast or up to 30% faster, or, outside batch-invariant forwards when 8 or more of
them share a 64-slot tile (wide forks, many conversations after one system prompt), by
`shared_prefix_decode`, which reads a prefix once for all the requests that share it;
elsewhere, or where the kernels could not be built, as one padded batch gathered from the pool.
Prefilling requests (new prompt tokens, even just one) are attended by `extend_attention` in bf16
on AVX512-BF16 CPUs, all in one call; otherwise every prompt row as a decode row
(`decode_attention`, each row over its own prefix) in batch-invariant forwards and where that
measured faster, else one request at a time with `F.scaled_dot_product_attention`. All index and mask tensors are built once per forward in
`prepare`, not per layer.

Where the kernels run, which of them a forward uses was measured on this CPU at start
(`AttentionChoice`, layers/attention_tuning.py): a forward that needs no batch invariance runs
torch's SDPA instead of `extend_attention` or `decode_attention` where that measured faster (ATen's
CPU flash attention uses AMX on the Xeons that have it). A batch-invariant forward always runs the
kernels: their rows do not depend on the batch or on how a prompt was split; SDPA's do.

Causal masking with a cached prefix of length P (E new tokens, S = P + E):

    new token j (position P + j) sees kv 0 .. P + j      mask[j, s] = s <= P + j
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import torch
import torch.nn.functional as F

from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers.attention.base import (
    DECODE,
    SHARED_PREFIX,
    TILED,
    AttentionBackend,
    DecodeKernelArgs,
    KVBuffers,
)


@dataclass
class _DecodeGroup:
    rows: torch.Tensor | None  # [B] rows of the T tokens; None when the whole batch decodes
    batch: int
    # for the C++ kernel: request b reads kv_indices[starts[b] : starts[b] + lens[b]]
    kv_indices: torch.Tensor
    starts: torch.Tensor  # [B] int64
    lens: torch.Tensor  # [B] int64
    shared_prefix: bool = False  # enough requests share K/V tiles: the shared_prefix_decode kernel
    has_prompt_rows: bool = False  # prompt rows attended as decode rows (batch-invariant, no extend kernel)
    # for the padded batch (no kernel)
    slots: torch.Tensor | None = None  # [B * L] kv slot of each (request, kv position), padded with slot 0
    mask: torch.Tensor | None = None  # [B, 1, 1, L] bool, False on padding; None when nothing is padded
    max_len: int = 0


# NOTE: the CPU flash kernel computes a query row the same way whatever the other rows are only
# from 4 rows up (1-3 rows take another path); shorter extends over a cached prefix repeat their
# first row up to 4, so that recomputing the last prompt token of a fully cached prompt gives the
# logits its first, uncached run got.
MIN_QUERY_ROWS = 4
SHARED_TILE = 64  # keys per tile of the C++ bf16 kernels (csrc/bf16_tiles.h)
# Requests that must share tiles for shared_prefix_decode to pay for packing them (attention of
# the embedded model: 18 forks of a 400-token prefix 31% faster than decode_attention, 6 forks 15%
# slower).
SHARED_PREFIX_MIN_REQUESTS = 8


KERNEL, TORCH = "cpu_kernels", "torch"


@dataclass(frozen=True)
class AttentionChoice:
    """What the forwards that need no batch invariance run, for prefill (`extend`) and decode,
    where the C++ kernel could: KERNEL or TORCH (measured by layers/attention_tuning.py); `why`
    says how it was decided, per op name of `implementations()` (e.g. "measured 1.80x faster")."""

    extend: str = KERNEL
    decode: str = KERNEL
    why: dict[str, str] = field(default_factory=dict)


@dataclass
class _ExtendGroup:
    """Every prefilling request of the batch, for the C++ extend kernel."""

    kv_indices: torch.Tensor
    q_starts: torch.Tensor  # [R] int64
    q_lens: torch.Tensor
    kv_starts: torch.Tensor
    seq_lens: torch.Tensor


@dataclass
class _Extend:
    q_start: int
    q_end: int
    slots: torch.Tensor | None  # [S] kv slots when a cached prefix must be read from the pool
    mask: torch.Tensor | None  # [E + pad, S] bool; None means plain causal over the new tokens
    pad: int = 0  # copies of the first query row in front (see MIN_QUERY_ROWS)


class TorchAttentionBackend(AttentionBackend):
    """See the module docstring; `cpu_kernels` is what `cpu_kernels.load()` returns (the
    `torch.ops.radixrt` namespace), or None for the pure-PyTorch paths; `extend_kernel` says
    whether its `extend_attention` takes this model's prefills (bf16, AVX512-BF16, head_dim 64/128);
    `choice` what forwards that need no batch invariance run (default: the kernels)."""

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float | None = None,
        cpu_kernels: Any = None,
        extend_kernel: bool = False,
        choice: AttentionChoice | None = None,
    ):
        super().__init__(num_heads, num_kv_heads, head_dim, scale)
        self.cpu_kernels = cpu_kernels
        self.extend_kernel = extend_kernel and cpu_kernels is not None
        self.choice = choice or AttentionChoice()
        self._out_slots: torch.Tensor | None = None
        self._decode: _DecodeGroup | None = None
        self._extend_group: _ExtendGroup | None = None
        self._extends: list[_Extend] = []

    def implementations(self) -> dict[str, str]:
        decode = self._describe("decode_attention", self.choice.decode, self.cpu_kernels is not None)
        # without extend_attention, the kernel that takes prompt rows is decode_attention
        extend = self._describe("extend_attention", self.choice.extend, self.cpu_kernels is not None)
        # NOTE: shared_prefix_decode runs under the same conditions as extend_attention
        shared = KERNEL if self.extend_kernel else "off"
        return {"decode_attention": decode, "extend_attention": extend, "shared_prefix_decode": shared}

    def _describe(self, op: str, used: str, kernel: bool) -> str:
        """e.g. "torch (measured 1.80x faster); batch-invariant: cpu_kernels"."""
        used = used if kernel else TORCH
        why = self.choice.why.get(op)
        text = used if why is None else f"{used} ({why})"
        return text if used == KERNEL or not kernel else f"{text}; batch-invariant: {KERNEL}"

    def prepare(self, batch: ForwardBatch) -> None:
        self._out_slots = batch.out_slots
        q_starts = [0, *accumulate(batch.extend_lens)]
        kv_starts = [0, *accumulate(batch.seq_lens)]
        on_cpu = batch.kv_indices.device.type == "cpu"
        kernels = self.cpu_kernels is not None and on_cpu
        # Where extend_attention does not run (float32; CPUs without AVX512-BF16), a batch-invariant
        # forward attends its prompt rows as decode rows: row j of a prompt by decode_attention over
        # the first P + j + 1 slots, the loop a decode step of that token runs, whatever the batch
        # and however the prompt was split (SDPA's rows depend on both). Other forwards do too
        # where that measured faster than SDPA (`choice.extend`: AVX2 builds, csrc/prompt_rows.h).
        rows_as_decode = kernels and not self.extend_kernel and (batch.invariant or self.choice.extend == KERNEL)
        decode_ids = [i for i, p in enumerate(batch.prefill) if not p or rows_as_decode]
        self._decode = None
        if decode_ids:
            all_decode = len(decode_ids) == batch.batch_size
            rows, starts, lens = _decode_rows(batch, decode_ids, q_starts, kv_starts)
            # NOTE: shared_prefix_decode keeps its own rule whichever decode candidate measured
            # faster: the measured batch shares nothing, so it says nothing of this case, where
            # reading the prefix once is what pays (31% over decode_attention at 18 forks) and the
            # padded SDPA would gather a copy of every request's whole sequence (not measured against
            # it). Not in invariant forwards: its partial softmaxes split where other prefixes end.
            shared = (
                self.extend_kernel
                and kernels
                and not batch.invariant
                and _shares_a_tile(batch.kv_indices, starts, lens)
            )
            torch_decode = self.choice.decode == TORCH and not batch.invariant and not shared
            prompt_rows = rows_as_decode and any(batch.prefill)
            padded = not kernels or (torch_decode and not prompt_rows)  # prompt rows take the kernel
            self._decode = _prepare_decode(batch, starts, lens, None if all_decode else rows, padded)
            self._decode.shared_prefix = shared
            self._decode.has_prompt_rows = prompt_rows
        prefill_ids = [i for i, p in enumerate(batch.prefill) if p and not rows_as_decode]
        self._extend_group, self._extends = None, []
        # batch-invariant forwards always take the kernel: its rows never depend on the batch
        extend_kernel = self.extend_kernel and (batch.invariant or self.choice.extend == KERNEL)
        if prefill_ids and extend_kernel and on_cpu:
            pick = lambda values: torch.tensor([values[i] for i in prefill_ids])  # noqa: E731
            self._extend_group = _ExtendGroup(
                batch.kv_indices, pick(q_starts), pick(batch.extend_lens), pick(kv_starts), pick(batch.seq_lens)
            )
        else:
            self._extends = [_prepare_extend(batch, i, q_starts[i], kv_starts[i]) for i in prefill_ids]

    def decode_kernel_args(self) -> DecodeKernelArgs | None:
        g = self._decode
        if g is None or g.rows is not None or g.slots is not None or g.has_prompt_rows or self.cpu_kernels is None:
            return None
        kernel = SHARED_PREFIX if g.shared_prefix else TILED if self.extend_kernel else DECODE  # as _attend_decode
        return DecodeKernelArgs(
            self._out_slots, g.kv_indices, g.starts, g.lens, self.scale, kernel, SHARED_PREFIX_MIN_REQUESTS
        )

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, kv_pool: KVBuffers
    ) -> torch.Tensor:
        assert self._out_slots is not None, "prepare() must run before attend()"
        self.store_kv(k, v, layer_id, kv_pool, self._out_slots)
        k_buf, v_buf = kv_pool.k_buffers[layer_id], kv_pool.v_buffers[layer_id]
        group = self._decode
        if group is not None and group.rows is None:
            return self._attend_decode(q, k_buf, v_buf, group)
        ext = self._extend_group
        if ext is not None:
            out = self.cpu_kernels.extend_attention(
                q, k_buf, v_buf, ext.kv_indices, ext.q_starts, ext.q_lens, ext.kv_starts, ext.seq_lens, self.scale
            )  # [T, H * D]; decode rows unset
            if group is not None:
                out.index_copy_(0, group.rows, self._attend_decode(q[group.rows], k_buf, v_buf, group))
            return out
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [T, H, D]
        if group is not None:
            decoded = self._attend_decode(q[group.rows], k_buf, v_buf, group)
            out.index_copy_(0, group.rows, decoded.view(-1, *q.shape[1:]))
        for ext in self._extends:
            out[ext.q_start : ext.q_end] = self._attend_extend(q, k, v, k_buf, v_buf, ext)
        return out.view(q.shape[0], -1)

    def _attend_decode(
        self, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, g: _DecodeGroup
    ) -> torch.Tensor:
        if g.shared_prefix:
            return self.cpu_kernels.shared_prefix_decode(
                q, k_buf, v_buf, g.kv_indices, g.starts, g.lens, self.scale, SHARED_PREFIX_MIN_REQUESTS
            )
        if g.slots is None:
            # where the extend kernel runs, decode rows take its arithmetic (and its speed: bf16 dot
            # products), so that a generated token's K/V is what a prefill of it would store
            run = self.cpu_kernels.tiled_decode_attention if self.extend_kernel else self.cpu_kernels.decode_attention
            return run(q, k_buf, v_buf, g.kv_indices, g.starts, g.lens, self.scale)
        return self._attend_decode_padded(q, k_buf, v_buf, g)

    def _attend_decode_padded(
        self, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, g: _DecodeGroup
    ) -> torch.Tensor:
        """One padded batch; the G query heads sharing a kv head act as G query rows."""
        hkv, d = self.num_kv_heads, self.head_dim
        shape = (g.batch, g.max_len, hkv, d)
        keys = k_buf.index_select(0, g.slots).view(shape).transpose(1, 2)  # [B, Hkv, L, D]
        values = v_buf.index_select(0, g.slots).view(shape).transpose(1, 2)
        queries = q.reshape(g.batch, hkv, -1, d)  # [B, Hkv, G, D]
        out = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=g.mask, scale=self.scale
        )  # [B, Hkv, G, D]
        return out.reshape(g.batch, -1)

    def _attend_extend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_buf: torch.Tensor,
        v_buf: torch.Tensor,
        ext: _Extend,
    ) -> torch.Tensor:
        # NOTE: 4-D [1, heads, len, dim] views: only 4-D inputs reach the fused CPU kernel.
        queries = q[None, ext.q_start : ext.q_end].transpose(1, 2)  # [1, H, E, D]
        if ext.pad:
            queries = torch.cat([queries[:, :, :1].expand(-1, -1, ext.pad, -1), queries], dim=2)
        if ext.slots is None:
            keys = k[None, ext.q_start : ext.q_end]  # [1, E, Hkv, D]
            values = v[None, ext.q_start : ext.q_end]
        else:
            keys = k_buf.index_select(0, ext.slots)[None]  # [1, S, Hkv, D]
            values = v_buf.index_select(0, ext.slots)[None]
        out = F.scaled_dot_product_attention(
            queries,
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=ext.mask,
            is_causal=ext.mask is None,
            scale=self.scale,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )  # [1, H, pad + E, D]
        return out[0, :, ext.pad :].transpose(0, 1)


def _decode_rows(
    batch: ForwardBatch, ids: list[int], q_starts: list[int], kv_starts: list[int]
) -> tuple[list[int], list[int], list[int]]:
    """(row, kv start, kv length) of every query row of the decoding requests `ids`.

    A decoding request may bring several rows (speculative verification: the token it sampled,
    then its draft tokens); row j attends over its sequence up to and including itself, exactly
    as a decode step of that token alone would (their K/V are stored before attention):

        request: | prefix (P) | t d1 d2 |     row j (t = 0, d1 = 1, ...) reads kv[0 : P + j + 1]
    """
    rows, starts, lens = [], [], []
    for i in ids:
        extend, seq = batch.extend_lens[i], batch.seq_lens[i]
        for j in range(extend):
            rows.append(q_starts[i] + j)
            starts.append(kv_starts[i])
            lens.append(seq - extend + j + 1)
    return rows, starts, lens


def _prepare_decode(
    batch: ForwardBatch, kv_starts: list[int], lens_list: list[int], rows: list[int] | None, padded: bool
) -> _DecodeGroup:
    device = batch.kv_indices.device
    lens = torch.tensor(lens_list, device=device)
    starts = torch.tensor(kv_starts, device=device)
    row_tensor = None if rows is None else torch.tensor(rows, device=device)
    group = _DecodeGroup(row_tensor, len(lens_list), batch.kv_indices, starts, lens)
    if padded:
        group.max_len = max_len = max(lens_list)
        offsets = torch.arange(max_len, device=device)
        valid = offsets[None, :] < lens[:, None]  # [B, L]
        pos = torch.where(valid, starts[:, None] + offsets, 0)
        group.slots = torch.where(valid, batch.kv_indices[pos], 0).view(-1)
        group.mask = valid[:, None, None, :] if min(lens_list) != max_len else None
    return group


def _shares_a_tile(kv_indices: torch.Tensor, starts: list[int], lens: list[int]) -> bool:
    """Whether SHARED_PREFIX_MIN_REQUESTS of these sequences list the same first SHARED_TILE slots
    (sequences are paths of the radix tree: requests that share any tile share the first)."""
    starts = [start for start, length in zip(starts, lens) if length > SHARED_TILE]
    if len(starts) < SHARED_PREFIX_MIN_REQUESTS:
        return False
    first_slots = kv_indices[torch.tensor(starts)].tolist()  # one gather: most batches stop here
    by_first_slot: dict[int, list[int]] = {}
    for start, slot in zip(starts, first_slots):
        by_first_slot.setdefault(slot, []).append(start)
    for same_first in by_first_slot.values():
        if len(same_first) < SHARED_PREFIX_MIN_REQUESTS:
            continue
        tiles = torch.stack([kv_indices[start : start + SHARED_TILE] for start in same_first])
        if int(torch.unique(tiles, dim=0, return_counts=True)[1].max()) >= SHARED_PREFIX_MIN_REQUESTS:
            return True
    return False


def _prepare_extend(batch: ForwardBatch, i: int, q_start: int, kv_start: int) -> _Extend:
    extend_len, seq_len = batch.extend_lens[i], batch.seq_lens[i]
    prefix = seq_len - extend_len
    if prefix == 0:
        return _Extend(q_start, q_start + extend_len, None, None)
    slots = batch.kv_indices[kv_start : kv_start + seq_len]
    device = slots.device
    q_pos = prefix + torch.arange(extend_len, device=device)
    mask = torch.arange(seq_len, device=device)[None, :] <= q_pos[:, None]  # [E, S]
    pad = max(0, MIN_QUERY_ROWS - extend_len) if device.type == "cpu" else 0
    if pad:
        mask = torch.cat([mask[:1].expand(pad, -1), mask])
    return _Extend(q_start, q_start + extend_len, slots, mask, pad)
