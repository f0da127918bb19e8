"""The CPU attention candidates measured at start (layers/attention_tuning.py): checked before they
are timed, cached per machine, and used by the torch backend only where batch invariance allows.
Nothing here assumes which candidate wins on this CPU."""

from __future__ import annotations

import json
import types

import pytest
import torch

from radixrt.radix_cache.pool import KVPool
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers import attention_tuning, cpu_kernels
from radixrt.workers.layers.attention import AttentionChoice, TorchAttentionBackend, create_backend
from radixrt.workers.layers.attention.torch_backend import KERNEL, TORCH
from radixrt.workers.model_runner import ModelRunner

pytestmark = pytest.mark.skipif(cpu_kernels.load() is None, reason="needs radixrt's C++ CPU kernels")
EXTEND = cpu_kernels.supports_extend(64, torch.bfloat16)  # this CPU runs the bf16 prefill kernel
needs_extend = pytest.mark.skipif(not EXTEND, reason="needs the C++ bf16 prefill attention (AVX512-BF16)")


@pytest.fixture
def cache(tmp_path, monkeypatch, quiet_cpus):
    monkeypatch.setenv("RADIXRT_KERNEL_CACHE", str(tmp_path))  # the compiled kernels stay loaded
    return tmp_path


def fail(*args, **kwargs):
    raise AssertionError("measured again")


def test_the_measurement_checks_every_candidate_and_times_both_of_each_op():
    m = attention_tuning.measure(9, 3, 64, torch.bfloat16, cpu_kernels.load(), EXTEND)
    # prefill's kernel: extend_attention, or (without it) the prompt rows through decode_attention
    assert m.tried == {"extend": (KERNEL, TORCH), "decode": (KERNEL, TORCH)}
    assert m.correct == m.tried  # ours and torch's both match the float64 softmax
    for op in ("extend", "decode"):
        assert set(m.seconds[op]) == {KERNEL, TORCH} and all(s > 0 for s in m.seconds[op].values())
    choice, wrong = attention_tuning.choose(m)
    assert not wrong and choice.decode in (KERNEL, TORCH) and choice.extend in (KERNEL, TORCH)
    assert choice.why["decode_attention"].startswith("measured ")
    assert choice.why["extend_attention"].startswith("measured ")


def test_choose_keeps_the_kernel_unless_torch_is_more_than_5_percent_faster():
    def measured(kernel: float, torch_s: float) -> AttentionChoice:
        both = (KERNEL, TORCH)
        timed = {op: {KERNEL: kernel, TORCH: torch_s} for op in ("extend", "decode")}
        return attention_tuning.choose(
            attention_tuning.AttentionMeasurement(dict.fromkeys(timed, both), dict.fromkeys(timed, both), timed)
        )[0]

    assert measured(1.0, 1.8) == AttentionChoice(
        KERNEL, KERNEL, dict.fromkeys(("extend_attention", "decode_attention"), "measured 1.80x faster")
    )
    assert measured(1.8, 1.0).extend == TORCH and measured(1.8, 1.0).why["extend_attention"] == "measured 1.80x faster"
    kept = measured(1.04, 1.0)
    assert kept.decode == KERNEL and kept.why["decode_attention"] == "measured 1.04x slower, kept within 5%"
    assert measured(1.06, 1.0).decode == TORCH


def test_a_cached_measurement_is_reused_without_checking_or_timing(cache, monkeypatch):
    monkeypatch.setattr(attention_tuning, "_time_candidates", lambda runs: dict.fromkeys(runs, 0.001))
    first = attention_tuning.cached_measure(4, 2, 32, torch.float32, cpu_kernels.load(), False)
    table = json.loads((cache / "attention_tuning.json").read_text())
    assert list(table) == [attention_tuning.kernel_tuning.machine_key()]
    assert table[attention_tuning.kernel_tuning.machine_key()][attention_tuning.shape_key(4, 2, 32, torch.float32)]
    monkeypatch.setattr(attention_tuning, "_time_candidates", fail)
    monkeypatch.setattr(attention_tuning, "_is_correct", fail)
    assert attention_tuning.cached_measure(4, 2, 32, torch.float32, cpu_kernels.load(), False) == first
    backend = create_backend("torch", "cpu", num_heads=4, num_kv_heads=2, head_dim=32, dtype=torch.float32)
    assert backend.implementations()["decode_attention"] == "cpu_kernels (measured 1.00x faster)"
    # another shape is measured; a corrupt file is measured again
    with pytest.raises(AssertionError, match="measured again"):
        attention_tuning.cached_measure(4, 4, 32, torch.float32, cpu_kernels.load(), False)
    (cache / "attention_tuning.json").write_text("{not json")
    with pytest.raises(AssertionError, match="measured again"):
        attention_tuning.cached_measure(4, 2, 32, torch.float32, cpu_kernels.load(), False)


def test_radixrt_kernels_torch_measures_nothing(cache, monkeypatch):
    monkeypatch.setenv("RADIXRT_KERNELS", "torch")
    monkeypatch.setattr(attention_tuning, "measure", fail)
    backend = create_backend("torch", "cpu", num_heads=9, num_kv_heads=3, head_dim=64, dtype=torch.bfloat16)
    assert backend.cpu_kernels is None and not backend.extend_kernel
    assert backend.implementations() == {
        "decode_attention": "torch",
        "extend_attention": "torch",
        "shared_prefix_decode": "off",
    }
    assert not (cache / "attention_tuning.json").exists()


def broken(op: str):
    """The kernels' namespace, with `op` off by 10% (and claimed the fastest by the timer below)."""
    real = cpu_kernels.load()

    def wrong(*args):
        return getattr(real, op)(*args) * 1.1

    names = ("decode_attention", "tiled_decode_attention", "extend_attention", "shared_prefix_decode")
    return types.SimpleNamespace(**{**{name: getattr(real, name) for name in names}, op: wrong})


def kernel_looks_fastest(runs):
    return {c: 1e-6 if c == KERNEL else 1.0 for c in runs}


def test_a_decode_kernel_that_gives_wrong_results_is_never_chosen(cache, monkeypatch):
    monkeypatch.setattr(attention_tuning, "_time_candidates", kernel_looks_fastest)
    ops = broken("decode_attention")
    m = attention_tuning.measure(4, 2, 32, torch.float32, ops, False)
    assert m.correct["decode"] == (TORCH,) and KERNEL not in m.seconds["decode"]
    choice, wrong = attention_tuning.choose(m)
    # float32: the prompt rows' kernel is the same decode_attention, wrong for prefill too
    assert choice.decode == TORCH and choice.extend == TORCH and wrong == {"decode", "extend"}
    monkeypatch.setattr(cpu_kernels, "load", lambda: ops)
    backend = create_backend("torch", "cpu", num_heads=4, num_kv_heads=2, head_dim=32, dtype=torch.float32)
    assert backend.cpu_kernels is None  # batch-invariant forwards do not get it either
    assert backend.implementations()["decode_attention"] == "torch (the kernel gave wrong results)"


@needs_extend
def test_an_extend_kernel_that_gives_wrong_results_is_never_chosen(cache, monkeypatch):
    monkeypatch.setattr(attention_tuning, "_time_candidates", kernel_looks_fastest)
    ops = broken("extend_attention")
    choice, wrong = attention_tuning.choose(attention_tuning.measure(9, 3, 64, torch.bfloat16, ops, True))
    assert choice.extend == TORCH and choice.decode == KERNEL and wrong == {"extend"}
    monkeypatch.setattr(cpu_kernels, "load", lambda: ops)
    backend = create_backend("torch", "cpu", num_heads=9, num_kv_heads=3, head_dim=64, dtype=torch.bfloat16)
    assert backend.cpu_kernels is ops and not backend.extend_kernel
    # batch-invariant forwards attend prompt rows with decode_attention (measured correct), never the wrong op
    described = "torch (the kernel gave wrong results); batch-invariant: cpu_kernels"
    assert backend.implementations()["extend_attention"] == described
    decode_rows = TorchAttentionBackend(9, 3, 64, None, ops, False, AttentionChoice(KERNEL, KERNEL))
    expected = attend(decode_rows, mixed_batch(invariant=True), torch.bfloat16)
    assert torch.equal(attend(backend, mixed_batch(invariant=True), torch.bfloat16), expected)


def mixed_batch(invariant: bool) -> ForwardBatch:
    """Two decoding requests and two prefilling ones (one over a cached prefix)."""
    return ForwardBatch.build(
        [[1], [2, 3, 4, 5, 6], [7], list(range(8, 48))],
        [list(range(1, 41)), list(range(100, 160)), list(range(200, 401)), list(range(420, 460))],
        invariant=invariant,
    )


def attend(backend: TorchAttentionBackend, batch: ForwardBatch, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    h, hkv, d = backend.num_heads, backend.num_kv_heads, backend.head_dim
    pool = KVPool(512, 1, hkv, d, dtype=dtype)
    pool.k_buffers[0].copy_(torch.randn(pool.k_buffers[0].shape, generator=g))
    pool.v_buffers[0].copy_(torch.randn(pool.v_buffers[0].shape, generator=g))
    q = torch.randn(batch.num_tokens, h, d, generator=g).to(dtype)
    k = torch.randn(batch.num_tokens, hkv, d, generator=g).to(dtype)
    v = torch.randn(batch.num_tokens, hkv, d, generator=g).to(dtype)
    backend.prepare(batch)
    return backend.attend(q, k, v, 0, pool)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_invariant_batches_use_the_kernels_whatever_was_measured(dtype):
    extend = dtype == torch.bfloat16 and EXTEND
    ops = cpu_kernels.load()
    kernels = TorchAttentionBackend(9, 3, 64, None, ops, extend, AttentionChoice(KERNEL, KERNEL))
    torch_won = TorchAttentionBackend(9, 3, 64, None, ops, extend, AttentionChoice(TORCH, TORCH))
    assert "; batch-invariant: cpu_kernels" in torch_won.implementations()["decode_attention"]
    expected = attend(kernels, mixed_batch(invariant=True), dtype)
    assert torch.equal(attend(torch_won, mixed_batch(invariant=True), dtype), expected)
    assert torch_won._decode.slots is None and (torch_won._extend_group is not None) == extend
    # without the extend kernel, the prompt rows are attended as decode rows, not by SDPA
    assert torch_won._decode.has_prompt_rows != extend and not torch_won._extends
    assert torch_won.decode_kernel_args() is None  # and never by the op per layer
    # a plain forward runs torch's SDPA for both, close to the kernels
    plain = attend(torch_won, mixed_batch(invariant=False), dtype)
    assert torch_won._decode.slots is not None and torch_won._extend_group is None and torch_won._extends
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(plain.float(), expected.float(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_without_the_extend_kernel_prompt_rows_take_decode_attention_where_it_measured_faster(dtype):
    won = TorchAttentionBackend(9, 3, 64, None, cpu_kernels.load(), False, AttentionChoice(KERNEL, TORCH))
    invariant = attend(won, mixed_batch(invariant=True), dtype)
    plain = attend(won, mixed_batch(invariant=False), dtype)
    assert won._decode.has_prompt_rows and not won._extends  # not SDPA
    # nor the padded SDPA batch that decode rows would take (torch won decode): the kernel takes all rows
    assert won._decode.slots is None
    assert torch.equal(plain, invariant)


@needs_extend
def test_with_torch_forced_for_prefill_the_models_logits_match_the_kernels(embedded_model_dir):
    runner = ModelRunner(embedded_model_dir, dtype="bfloat16", device="cpu", attention_backend="torch")
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(100, 20_000, (90,), generator=gen).tolist()

    def logits(extend: str) -> torch.Tensor:
        runner.backend.choice = AttentionChoice(extend=extend, decode=KERNEL)
        pool = KVPool(256, *runner.kv_shape(), dtype=runner.dtype)
        first = ForwardBatch.build([ids[:60]], [list(range(1, 61))], [list(range(60))], prefill=[True])
        # the rest of the prompt over the cached first 60 tokens
        rest = ForwardBatch.build([ids[60:]], [list(range(1, 91))], [list(range(30))], prefill=[True])
        return torch.cat([runner.forward(first, pool), runner.forward(rest, pool)])

    kernel, sdpa = logits(KERNEL), logits(TORCH)
    assert runner.backend._extends and runner.backend._extend_group is None  # SDPA did run
    # bf16 activations through 30 layers: 5% of the largest logit, as test_model_numerics allows (0.63 of 32 here)
    scale = kernel.abs().max()
    assert (sdpa - kernel).abs().max() <= 0.05 * scale
    top2 = kernel.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.025 * scale  # rows where bf16 noise cannot flip the greedy token
    assert torch.equal(sdpa.argmax(-1)[clear], kernel.argmax(-1)[clear])
    assert int(clear.sum()) >= 10  # of 90 rows (18 here)
