"""Time the CPU attention candidates of a model's shape on this machine and remember the result.

For one (heads, kv heads, head_dim, dtype), two ops each have two candidates, both run through the
torch attention backend's own `prepare` / `attend` on one layer of a small pool (the served code):
  extend  prefill: our `extend_attention` kernel (bf16 on AVX512-BF16; elsewhere the prompt rows
          attended as decode rows by `decode_attention`) vs torch's
          `F.scaled_dot_product_attention` per request (ATen's CPU flash attention: AMX on the
          Xeons that have it), on one request of 512 new tokens over a 512-token cached prefix and
          one of 1,024 new tokens (the two times are added)
  decode  our decode kernel (`tiled_decode_attention` where the extend kernel runs, else
          `decode_attention`) vs one padded SDPA batch, on 16 requests of ~1,024 tokens
Each candidate is first checked against a float64 softmax on a small mixed batch (a wrong one is
never chosen), then timed: candidates take turns, and the median of their rounds counts. The kernel
is kept unless torch measured more than 5% faster (`KERNEL_MARGIN`). The result is cached in
`$RADIXRT_KERNEL_CACHE/attention_tuning.json` under the key of kernel_tuning.machine_key() (CPU,
flags, compiled kernels, torch's version, threads) and the shape, so later starts measure nothing
(unless other processes took the CPUs while it was timed: other_load.py).
About 0.2 s for the embedded model's shape (bf16) on 2 AMD EPYC cores.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers import cpu_kernels, kernel_tuning
from radixrt.workers.layers.attention.torch_backend import KERNEL, TORCH, AttentionChoice, TorchAttentionBackend
from radixrt.workers.layers.other_load import OtherLoad

logger = logging.getLogger(__name__)

TUNING_VERSION = 3  # bumped whenever how candidates are measured changes
PREFILLS = ((512, 512), (0, 1024))  # (cached prefix, new tokens) of the timed prefill requests
DECODE_BATCH, DECODE_LEN = 16, 1024
# the correctness check's batches: (cached prefix, new tokens) per request
CHECK_PREFILLS = ((0, 37), (100, 5), (17, 1), (250, 64), (3, 3))
CHECK_DECODES = (1, 40, 130, 257, 70)  # sequence lengths
ROUNDS = 5
MIN_SAMPLE_S = 5e-3  # calls are repeated until a sample lasts this long
WRONG = "the kernel gave wrong results"
KERNEL_MARGIN = 1.05  # the kernel is kept unless torch takes less than 1/KERNEL_MARGIN of its time
OPS = {"extend": "extend_attention", "decode": "decode_attention"}  # op -> its name in implementations()


@dataclass(frozen=True)
class AttentionMeasurement:
    """Per op ("extend", "decode"): the candidates tried, those that gave correct results, and
    their seconds per layer (timed only where two were correct)."""

    tried: dict[str, tuple[str, ...]]
    correct: dict[str, tuple[str, ...]]
    seconds: dict[str, dict[str, float]]

    def to_json(self) -> dict:
        names = lambda d: {op: list(c) for op, c in d.items()}  # noqa: E731
        return {"tried": names(self.tried), "correct": names(self.correct), "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict) -> AttentionMeasurement:
        names = lambda d: {op: tuple(str(c) for c in cs) for op, cs in d.items()}  # noqa: E731
        seconds = {op: {str(c): float(s) for c, s in t.items()} for op, t in data["seconds"].items()}
        return cls(names(data["tried"]), names(data["correct"]), seconds)


def shape_key(num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> str:
    return f"attention-v{TUNING_VERSION}:{num_heads}x{num_kv_heads}x{head_dim}:{str(dtype).removeprefix('torch.')}"


def cache_file() -> Path:
    return cpu_kernels.build_dir() / "attention_tuning.json"


# each op's candidates (prefill's kernel is decode_attention where extend_attention does not take the shape)
CANDIDATES = {"extend": (KERNEL, TORCH), "decode": (KERNEL, TORCH)}


def choose(m: AttentionMeasurement) -> tuple[AttentionChoice, set[str]]:
    """What forwards that need no batch invariance run, and the ops whose kernel was wrong."""
    used, why, wrong = {}, {}, set()
    for op, name in OPS.items():
        seconds, correct = m.seconds.get(op, {}), m.correct.get(op, ())
        if KERNEL in m.tried.get(op, ()) and KERNEL not in correct:
            wrong.add(op)
            why[name] = WRONG
        if KERNEL in seconds and TORCH in seconds:
            kernel, torch_s = seconds[KERNEL], seconds[TORCH]
            used[op] = KERNEL if kernel <= KERNEL_MARGIN * torch_s else TORCH
            fast, slow = (kernel, torch_s) if used[op] == KERNEL else (torch_s, kernel)
            if fast <= slow:
                why[name] = f"measured {slow / fast:.2f}x faster"
            else:  # the kernel, kept within the margin
                why[name] = f"measured {fast / slow:.2f}x slower, kept within {100 * (KERNEL_MARGIN - 1):.0f}%"
        else:  # one candidate left (or none: torch is the reference)
            used[op] = KERNEL if KERNEL in correct else TORCH
    return AttentionChoice(extend=used["extend"], decode=used["decode"], why=why), wrong


def measure(num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, ops: Any, extend_kernel: bool):
    """Check, then time, each op's candidates; `ops` is the `torch.ops.radixrt` namespace."""
    tried = dict(CANDIDATES)
    correct, seconds = {}, {}
    for op, names in tried.items():
        new = {
            c: functools.partial(_backend, num_heads, num_kv_heads, head_dim, ops, extend_kernel, op, c) for c in names
        }
        check = _Case(new[names[0]](), op, _check_requests(op), dtype, seed=1)
        correct[op] = tuple(c for c in names if _is_correct(new[c](), check))
        for c in set(names) - set(correct[op]):
            logger.warning("attention candidate %s gives wrong results for %s; never chosen", c, OPS[op])
        seconds[op] = {}
        if len(correct[op]) > 1:  # nothing to choose from otherwise
            cases = [_Case(new[names[0]](), op, r, dtype, seed=2 + i) for i, r in enumerate(_timed_requests(op))]
            seconds[op] = _time_candidates({c: _timed_call(new[c], cases) for c in correct[op]})
    return AttentionMeasurement(tried, correct, seconds)


def cached_measure(
    num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, ops: Any, extend_kernel: bool
) -> AttentionMeasurement:
    """`measure`, or what an earlier start on this machine measured for the same shape."""
    key, shape = kernel_tuning.machine_key(), shape_key(num_heads, num_kv_heads, head_dim, dtype)
    try:
        entry = kernel_tuning.read_table(cache_file()).get(key, {}).get(shape)
        found = None if entry is None else AttentionMeasurement.from_json(entry)
    except (AttributeError, KeyError, TypeError, ValueError):
        found = None  # written by another version: measure again
    if found is not None and found.tried == CANDIDATES:
        return found
    start = time.perf_counter()
    with OtherLoad() as load:
        result = measure(num_heads, num_kv_heads, head_dim, dtype, ops, extend_kernel)
    logger.debug("measured attention kernels in %.2f s: %s", time.perf_counter() - start, result.seconds)
    if kernel_tuning.undisturbed(load, "attention kernel timings"):
        kernel_tuning.save_entry(cache_file(), key, shape, result.to_json(), "attention kernel timings")
    return result


def plan(
    num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, ops: Any, extend_kernel: bool
) -> tuple[AttentionChoice, set[str]]:
    """The measured (or recalled) choice for this shape, logged once."""
    choice, wrong = choose(cached_measure(num_heads, num_kv_heads, head_dim, dtype, ops, extend_kernel))
    said = [f"{op} {getattr(choice, op)} ({choice.why[name]})" for op, name in OPS.items() if name in choice.why]
    if said:
        logger.info("attention kernels, measured on this CPU: %s", "; ".join(said))
    return choice, wrong


def _backend(heads: int, kv_heads: int, dim: int, ops: Any, extend_kernel: bool, op: str, candidate: str):
    choice = AttentionChoice(**{op: candidate})
    return TorchAttentionBackend(heads, kv_heads, dim, None, ops, extend_kernel, choice)


def _check_requests(op: str) -> list[tuple[int, int]]:
    return list(CHECK_PREFILLS) if op == "extend" else [(n - 1, 1) for n in CHECK_DECODES]


def _timed_requests(op: str) -> list[list[tuple[int, int]]]:
    """The timed batches of `op`, each a list of requests (cached prefix, new tokens)."""
    if op == "extend":
        return [[request] for request in PREFILLS]
    return [[(DECODE_LEN - 8 * i - 1, 1) for i in range(DECODE_BATCH)]]  # lengths differ, as a batch's do


class _Case:
    """A batch of `requests` (cached prefix, new tokens) on consecutive slots from 1 of one layer of
    a pool (slot 0 is the padding one), with random K/V and the new tokens' q, k, v."""

    def __init__(self, like: TorchAttentionBackend, op: str, requests: list[tuple[int, int]], dtype, seed: int):
        seqs, at = [], 1
        for prefix, new in requests:
            seqs.append(list(range(at, at + prefix + new)))
            at += prefix + new
        ids = [[0] * new for _, new in requests]
        self.batch = ForwardBatch.build(ids, seqs, prefill=[op == "extend"] * len(requests))
        gen = torch.Generator().manual_seed(seed)
        t, hkv, d = self.batch.num_tokens, like.num_kv_heads, like.head_dim
        self.k_buffers = [torch.randn(at, hkv, d, generator=gen).to(dtype)]
        self.v_buffers = [torch.randn(at, hkv, d, generator=gen).to(dtype)]
        self.q = torch.randn(t, like.num_heads, d, generator=gen).to(dtype)
        self.k = torch.randn(t, hkv, d, generator=gen).to(dtype)
        self.v = torch.randn(t, hkv, d, generator=gen).to(dtype)

    def attend(self, backend: TorchAttentionBackend) -> torch.Tensor:
        return backend.attend(self.q, self.k, self.v, 0, self)


def _is_correct(backend: TorchAttentionBackend, case: _Case) -> bool:
    backend.prepare(case.batch)
    try:
        got = case.attend(backend).double()
    except RuntimeError as e:
        logger.debug("attention candidate failed: %s", e)
        return False
    expected = _reference(backend, case)
    rtol, atol = (1.6e-2, 1.2e-2) if case.q.dtype == torch.bfloat16 else (1e-4, 1e-4)
    return got.shape == expected.shape and bool(((got - expected).abs() <= atol + rtol * expected.abs()).all())


def _reference(backend: TorchAttentionBackend, case: _Case) -> torch.Tensor:
    """Float64 causal softmax attention of every new row over its request's sequence in the pool."""
    group, batch = backend.num_heads // backend.num_kv_heads, case.batch
    keys, values = case.k_buffers[0].double(), case.v_buffers[0].double()
    out, q_at, kv_at = [], 0, 0
    for new, seq in zip(batch.extend_lens, batch.seq_lens):
        slots = batch.kv_indices[kv_at : kv_at + seq]
        k = keys[slots].repeat_interleave(group, dim=1).transpose(0, 1)  # [H, S, D]
        v = values[slots].repeat_interleave(group, dim=1).transpose(0, 1)
        rows = case.q[q_at : q_at + new].double().transpose(0, 1)  # [H, E, D]
        scores = rows @ k.transpose(1, 2) * backend.scale  # [H, E, S]
        visible = torch.arange(seq)[None, :] <= (seq - new + torch.arange(new))[:, None]
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        out.append((probs @ v).transpose(0, 1).reshape(new, -1))
        q_at, kv_at = q_at + new, kv_at + seq
    return torch.cat(out)


def _timed_call(new_backend: Callable[[], TorchAttentionBackend], cases: list[_Case]) -> Callable[[], None]:
    """One layer's attention (K/V stores included) over every case, each prepared once by its own
    backend, as a forward prepares once for all its layers."""
    backends = [new_backend() for _ in cases]
    for backend, case in zip(backends, cases):
        backend.prepare(case.batch)

    def call() -> None:
        for backend, case in zip(backends, cases):
            case.attend(backend)

    return call


def _time_candidates(runs: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Median seconds per call of each run; candidates alternate so that noise hits all."""
    reps, samples = {}, {name: [] for name in runs}
    for name, run in runs.items():
        start = time.perf_counter()
        run()  # warms up too (first-touch pages, oneDNN's primitive cache): its time only sets reps
        reps[name] = max(1, int(MIN_SAMPLE_S / max(time.perf_counter() - start, 1e-7)))
    for _ in range(ROUNDS):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(reps[name]):
                run()
            samples[name].append((time.perf_counter() - start) / reps[name])
    return {name: statistics.median(s) for name, s in samples.items()}
