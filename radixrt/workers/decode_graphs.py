"""Decode steps replayed from CUDA graphs.

On a GPU a decode step of a small model is a few hundred microseconds of kernels behind several
milliseconds of Python launching them, one at a time. A CUDA graph records a step's launches once
and replays them all with one call. A graph replays exactly what it recorded: the same tensors, the
same shapes. So each graph is captured at start-up for one batch size (a bucket: 1, 2, 4, 8, then
every 8 up to `max_batch`), over static input buffers. A decode batch of b rows runs the graph of
the smallest bucket >= b:

    static buffers:  input_ids  [ t0 t1 t2 | 0 ]        bucket 4, batch of 3
                     positions  [ p0 p1 p2 | 0 ]
                     out_slots  [ s0 s1 s2 | 0 ]        slot 0: the pool's padding slot
                     kv_indptr  [ 0 .. a .. b .. c | c+1 ]
                     kv_indices [ request 0 | request 1 | request 2 | 0 ]
    logits of the captured output rows [0, 3); the padding row's are dropped

A padding row decodes token 0 at position 0 over slot 0 alone. The pool never hands slot 0 out,
so it writes and reads nothing of anyone's cache. The attention backend's per-step plan (host
work: flashinfer's `plan`) runs before each replay, outside the graph. It writes the real batch
into buffers the graph reads (`AttentionBackend.graph_buffers`).

Not graphed, and run eagerly: prefill and mixed batches, rows with drafts (several rows a
request), batches larger than the largest bucket or whose sequences exceed the index buffer.

`capture` takes the graph factory, so that the CPU tests can run all of this with `EagerGraph`,
which records the step as a function and calls it at replay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import torch

from radixrt.workers.forward_batch import ForwardBatch

log = logging.getLogger(__name__)

PADDING_SLOT = 0  # KVPool never hands it out


def batch_buckets(max_batch: int) -> list[int]:
    """The batch sizes that get a graph: 1, 2, 4, 8, then every 8 up to `max_batch` (included)."""
    if max_batch < 1:
        raise ValueError(f"the largest CUDA-graph batch must be >= 1, got {max_batch}")
    buckets = [b for b in (1, 2, 4) if b < max_batch] + list(range(8, max_batch, 8))
    return buckets + [max_batch]


def bucket_for(batch_size: int, buckets: list[int]) -> int | None:
    """The smallest bucket that holds `batch_size` rows, or None (the batch runs eagerly)."""
    return next((b for b in buckets if b >= batch_size), None)


class Graph(Protocol):
    def capture(self, step: Callable[[], torch.Tensor]) -> torch.Tensor: ...

    def replay(self) -> None: ...


class CudaGraph:
    """One CUDA graph; graphs captured by one `DecodeGraphs` share a memory pool."""

    def __init__(self, pool: Any = None):
        self.graph = torch.cuda.CUDAGraph()
        self.pool = pool

    def capture(self, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        # a warm-up on a side stream first (PyTorch's advice): lazy allocations, cuBLAS workspaces
        # and JIT-loaded kernels happen outside the graph
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(self.graph, pool=self.pool):
            out = step()
        return out

    def replay(self) -> None:
        self.graph.replay()


class EagerGraph:
    """A graph's contract without CUDA: `capture` records the step and runs it once; `replay`
    runs it again and writes its result into the tensor `capture` returned, as a replayed CUDA
    graph writes its captured output."""

    def __init__(self, pool: Any = None):
        self._step: Callable[[], torch.Tensor] | None = None
        self._out: torch.Tensor | None = None

    def capture(self, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        self._step = step
        self._out = step().clone()
        return self._out

    def replay(self) -> None:
        assert self._step is not None and self._out is not None, "capture() first"
        self._out.copy_(self._step())


class DecodeGraphs:
    """Static buffers and one graph per bucket for decode batches (one row per request)."""

    def __init__(self, model: Any, backend: Any, kv_pool: Any, max_batch: int, max_kv_tokens: int,
                 device: torch.device | str):  # fmt: skip
        self.model, self.backend, self.kv_pool = model, backend, kv_pool
        self.buckets = batch_buckets(max_batch)
        self.max_kv_tokens = max_kv_tokens
        self.device = torch.device(device)
        n = self.buckets[-1]
        long = {"dtype": torch.int64, "device": self.device}
        self.input_ids = torch.zeros(n, **long)
        self.positions = torch.zeros(n, **long)
        self.out_slots = torch.full((n,), PADDING_SLOT, **long)
        self.kv_indptr = torch.arange(n + 1, dtype=torch.int32, device=self.device)
        self.kv_indices = torch.full((max_kv_tokens + n,), PADDING_SLOT, **long)
        self.qo_indptr = torch.arange(n + 1, dtype=torch.int32, device=self.device)
        self.logits_indices = torch.arange(n, **long)
        self._graphs: dict[int, Graph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        self.replays = 0

    def capture(self, new_graph: Callable[[Any], Graph] = CudaGraph, pool: Any = None) -> None:
        """One graph per bucket, the largest first (later ones reuse its memory)."""
        for size in reversed(self.buckets):
            batch = self._static_batch(size, [1] * size)
            self.backend.graph_buffers(size, self.kv_indices.numel())
            self.model.prepare(batch, self.backend)
            graph = new_graph(pool)
            self._outputs[size] = graph.capture(lambda b=batch: self.model.run_layers(b, self.kv_pool, self.backend))
            self._graphs[size] = graph
            pool = getattr(graph, "graph", None) and graph.graph.pool()
        log.info("captured decode graphs for batch sizes %s", self.buckets)

    def fits(self, batch: ForwardBatch) -> bool:
        """Whether `batch` can replay a graph: decode rows only, one per request and each with its
        logits, within the largest bucket and the index buffer."""
        return (
            bool(self._graphs)
            and batch.is_decode
            and batch.num_tokens == batch.batch_size <= self.buckets[-1]
            and int(batch.logits_indices.numel()) == batch.batch_size
            and sum(batch.seq_lens) <= self.max_kv_tokens
        )

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits `[batch_size, vocab]` of a batch that `fits`, from its bucket's graph."""
        size, total = bucket_for(batch.batch_size, self.buckets), sum(batch.seq_lens)
        assert size is not None and self.fits(batch)
        b, pad = batch.batch_size, size - batch.batch_size
        self.input_ids[:b].copy_(batch.input_ids, non_blocking=True)
        self.positions[:b].copy_(batch.positions, non_blocking=True)
        self.out_slots[:b].copy_(batch.out_slots, non_blocking=True)
        self.kv_indptr[: b + 1].copy_(batch.kv_indptr, non_blocking=True)
        self.kv_indices[:total].copy_(batch.kv_indices, non_blocking=True)
        if pad:  # padding rows: token 0 at position 0 over the padding slot alone
            self.input_ids[b:size].zero_()
            self.positions[b:size].zero_()
            self.out_slots[b:size].fill_(PADDING_SLOT)
            self.kv_indices[total : total + pad].fill_(PADDING_SLOT)
            torch.arange(total + 1, total + pad + 1, out=self.kv_indptr[b + 1 : size + 1])
        padded = self._static_batch(size, batch.seq_lens + [1] * pad, invariant=batch.invariant)
        self.model.prepare(padded, self.backend)
        self._graphs[size].replay()
        self.replays += 1
        return self._outputs[size][:b]

    def _static_batch(self, size: int, seq_lens: list[int], invariant: bool = False) -> ForwardBatch:
        return ForwardBatch(
            input_ids=self.input_ids[:size],
            positions=self.positions[:size],
            out_slots=self.out_slots[:size],
            qo_indptr=self.qo_indptr[: size + 1],
            kv_indptr=self.kv_indptr[: size + 1],
            kv_indices=self.kv_indices[: sum(seq_lens)],
            extend_lens=[1] * size,
            seq_lens=seq_lens,
            logits_indices=self.logits_indices[:size],
            prefill=[False] * size,
            invariant=invariant,
        )
