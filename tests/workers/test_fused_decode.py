"""Decode steps through one C++ op over every decoder layer (layers/fused_decode.py): the logits and the
K/V written are bit for bit the modules' (bf16 and float32, int8, GGUF Q8_0 / Q4_1 with biases and
a widened linear; one or several rows per request; batch-invariant forwards), and the modules run
wherever the op cannot: prefill rows, forward hooks, a linear without a kernel there."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from radixrt.radix_cache.pool import KVPool
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.gguf_import import import_gguf
from radixrt.workers.layers import cpu_kernels, cpu_linear, linear_candidates
from radixrt.workers.layers.attention.torch_backend import (
    SHARED_PREFIX_MIN_REQUESTS,
    SHARED_TILE,
    TORCH,
    AttentionChoice,
)
from radixrt.workers.model_runner import DTYPES, ModelRunner
from tests.tiny_models import write_tiny_llama
from tests.workers.test_gguf_import import write_gguf
from tests.workers.test_gguf_weights import TYPES, tokenizer_meta  # noqa: F401  (a fixture)

pytestmark = pytest.mark.skipif(cpu_kernels.load() is None, reason="the C++ kernels did not build here")

CONTEXT = 40


class CountingOps:
    """torch.ops.radixrt with its decode_layers calls (one per fused forward) counted."""

    def __init__(self, ops):
        self.ops, self.calls = ops, 0

    def decode_layers(self, *args):
        self.calls += 1
        return self.ops.decode_layers(*args)


def kernel_runner(folder, **options) -> ModelRunner:
    """A CPU runner whose decode attention runs the C++ kernels in every forward (where torch's
    SDPA measured faster, only batch-invariant forwards do: tested below)."""
    runner = ModelRunner(folder, device="cpu", **options)
    runner.backend.choice = AttentionChoice()
    return runner


def filled_pool(runner: ModelRunner) -> KVPool:
    pool = KVPool(400, *runner.kv_shape(), dtype=runner.dtype)
    gen = torch.Generator().manual_seed(0)
    for buf in [*pool.k_buffers, *pool.v_buffers]:
        buf.copy_(torch.randn(buf.shape, generator=gen))
    return pool


def decode_batch(rows_per_request: list[int], invariant: bool = False) -> ForwardBatch:
    """Request i has CONTEXT + 7 i cached tokens and decodes rows_per_request[i] rows (more than
    one: draft tokens being verified), logits for every row."""
    new_ids, slots, start = [], [], 1
    for i, rows in enumerate(rows_per_request):
        length = CONTEXT + 7 * i + rows
        slots.append(list(range(start, start + length)))
        new_ids.append([100 + 37 * i + j for j in range(rows)])
        start += length
    logit_rows = [list(range(rows)) for rows in rows_per_request]
    prefill = [False] * len(rows_per_request)
    return ForwardBatch.build(new_ids, slots, logit_rows, prefill=prefill, invariant=invariant)


def both_ways(runner: ModelRunner, batch: ForwardBatch) -> tuple[int, torch.Tensor, torch.Tensor, KVPool, KVPool]:
    """(decode_layers calls, logits through the fused path, through the modules, and their pools)."""
    fused = runner.model.fused_decode
    assert fused is not None
    spy = fused.ops = CountingOps(fused.ops)
    try:
        fused_pool, module_pool = filled_pool(runner), filled_pool(runner)
        got = runner.forward(batch, fused_pool)
        runner.model.fused_decode = None
        expected = runner.forward(batch, module_pool)
    finally:
        runner.model.fused_decode = fused
        fused.ops = spy.ops
    return spy.calls, got, expected, fused_pool, module_pool


def assert_same(got: torch.Tensor, expected: torch.Tensor, pool_a: KVPool, pool_b: KVPool) -> None:
    assert torch.equal(got, expected)
    for a, b in zip([*pool_a.k_buffers, *pool_a.v_buffers], [*pool_b.k_buffers, *pool_b.v_buffers], strict=True):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def head64_dir(tmp_path_factory, embedded_model_dir):
    """head_dim 64: the tiled bf16 decode kernel where the CPU has AVX512-BF16."""
    out = tmp_path_factory.mktemp("tiny-head64")
    return write_tiny_llama(out, embedded_model_dir, hidden_size=128, num_attention_heads=2, num_key_value_heads=1)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("quantization", ["none", "int8"])
@pytest.mark.parametrize("model", ["head16", "head64"])
def test_fused_decode_steps_equal_the_modules_bit_for_bit(model, quantization, dtype, tiny_model_dir, head64_dir):
    folder = tiny_model_dir if model == "head16" else head64_dir
    runner = kernel_runner(folder, dtype=dtype, quantization=quantization)
    assert runner.kernels["decode_layer"] == "cpu_kernels"
    for rows, invariant in (([1], False), ([1, 1, 1], False), ([3, 1], False), ([1, 1], True)):
        calls, got, expected, pool_a, pool_b = both_ways(runner, decode_batch(rows, invariant))
        assert calls == 1, (rows, invariant)
        assert_same(got, expected, pool_a, pool_b)
        assert got.shape[0] == sum(rows)


CANDIDATES = [(c, d) for d in ("bfloat16", "float32") for c in linear_candidates.available(DTYPES[d])]


@pytest.mark.parametrize(("candidate", "dtype"), CANDIDATES)
def test_each_linear_candidate_runs_in_the_fused_op_as_in_its_module(candidate, dtype, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(cpu_linear, "choose", lambda _measured: cpu_linear.LinearChoice({1: candidate}, None))
    runner = kernel_runner(tiny_model_dir, dtype=dtype)
    assert runner.model.model.layers[0].mlp.down_proj.choice.fast == {1: candidate}
    calls, got, expected, pool_a, pool_b = both_ways(runner, decode_batch([1, 2]))
    assert calls == 1
    assert_same(got, expected, pool_a, pool_b)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_gguf_tensors_biases_and_a_widened_linear_take_the_fused_path(dtype, tokenizer_meta, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=49152, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()  # q/k/v biases
    path = write_gguf(tmp_path / "tiny.gguf", model, "qwen2", tokenizer_meta, "qwen2", TYPES)  # Q8_0 and Q4_1
    folder = import_gguf(path, tmp_path / "folder", progress=False)
    runner = kernel_runner(folder, dtype=dtype, quantization="gguf")
    assert type(runner.model.model.layers[1].self_attn.qkv_proj) is nn.Linear  # widened (mixed types)
    calls, got, expected, pool_a, pool_b = both_ways(runner, decode_batch([1, 2]))
    assert calls == 1
    assert_same(got, expected, pool_a, pool_b)


@pytest.fixture(scope="module")
def tiny_runner(tiny_model_dir):
    return kernel_runner(tiny_model_dir, dtype="bfloat16")


def test_prefill_and_mixed_batches_run_the_modules(tiny_runner):
    prefill = ForwardBatch.build([[5, 6, 7, 8]], [list(range(1, 5))])
    decode_and_prefill = ForwardBatch.build([[5], [6, 7, 8]], [list(range(1, 30)), list(range(30, 40))])
    for batch in (prefill, decode_and_prefill):
        calls, got, expected, pool_a, pool_b = both_ways(tiny_runner, batch)
        assert calls == 0
        assert_same(got, expected, pool_a, pool_b)


def test_requests_sharing_a_prefix_fuse_on_the_shared_prefix_kernel(head64_dir):
    runner = kernel_runner(head64_dir, dtype="bfloat16")
    prefix = list(range(1, 1 + 2 * SHARED_TILE))  # two tiles every request shares
    slots = [prefix + list(range(150 + 25 * i, 150 + 25 * i + 5 + i)) for i in range(SHARED_PREFIX_MIN_REQUESTS)]
    batch = ForwardBatch.build([[300 + i] for i in range(len(slots))], slots)
    runner.backend.prepare(batch)
    shared = runner.backend._decode.shared_prefix  # bf16 head_dim 64 on AVX512-BF16 CPUs; elsewhere no kernel
    assert shared == runner.backend.extend_kernel
    calls, got, expected, pool_a, pool_b = both_ways(runner, batch)
    assert calls == 1
    assert_same(got, expected, pool_a, pool_b)


def test_where_torch_attention_was_chosen_only_invariant_decode_forwards_fuse(tiny_model_dir):
    runner = kernel_runner(tiny_model_dir, dtype="float32")
    runner.backend.choice = AttentionChoice(decode=TORCH)  # as where SDPA measured faster
    for invariant, fused_calls in ((False, 0), (True, 1)):  # invariant forwards keep the kernels
        calls, got, expected, pool_a, pool_b = both_ways(runner, decode_batch([1, 2], invariant))
        assert calls == fused_calls
        assert_same(got, expected, pool_a, pool_b)


def test_forward_hooks_run_and_turn_the_fused_path_off(tiny_runner):
    seen = []
    mlp = tiny_runner.model.model.layers[1].mlp
    handle = mlp.register_forward_hook(lambda _module, _args, out: seen.append(out.shape))
    try:
        calls, got, expected, *_ = both_ways(tiny_runner, decode_batch([1]))
    finally:
        handle.remove()
    assert calls == 0 and seen == [(1, 64), (1, 64)]  # the hook ran in both forwards
    assert torch.equal(got, expected)
    with nn.modules.module.register_module_forward_pre_hook(lambda _module, _args: None):
        assert both_ways(tiny_runner, decode_batch([1]))[0] == 0
    assert both_ways(tiny_runner, decode_batch([1]))[0] == 1  # hooks gone: fused again


class Wrapped(nn.Module):
    """A linear the fused op knows nothing of."""

    def __init__(self, linear: nn.Module):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_a_linear_without_a_kernel_there_keeps_the_modules(tiny_model_dir):
    runner = kernel_runner(tiny_model_dir, dtype="float32")
    attn = runner.model.model.layers[0].self_attn
    attn.o_proj = Wrapped(attn.o_proj)
    calls, got, expected, pool_a, pool_b = both_ways(runner, decode_batch([1, 1]))
    assert calls == 0
    assert_same(got, expected, pool_a, pool_b)


def layer_weights(runner: ModelRunner) -> tuple[list, list, list, list, list, tuple[int, int]]:
    """What FusedDecodeLayers hands DecodeStack for one-row steps: (norms, post norms, eps, linear
    tensors, linear ints, (heads, kv heads))."""
    norms, posts, eps, tensors, info = [], [], [], [], []
    for layer in runner.model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        specs = [lin.fused_linear(1, False) for lin in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)]
        norms.append(layer.input_layernorm.weight)
        posts.append(layer.post_attention_layernorm.weight)
        eps.append(layer.input_layernorm.eps)
        tensors += [t for spec in specs for t in spec[3]]
        info += [value for spec in specs for value in spec[:3]]
    return norms, posts, eps, tensors, info, (attn.num_heads, attn.num_kv_heads)


def test_bad_decode_stacks_are_refused_when_built(tiny_runner):
    norms, posts, eps, tensors, info, heads = layer_weights(tiny_runner)
    stack = torch.classes.radixrt.DecodeStack
    with pytest.raises(RuntimeError, match="two norms and an eps for each"):
        stack(norms, posts[:1], eps, tensors, info, *heads)
    with pytest.raises(RuntimeError, match=r"four linears \(qkv, o, gate_up, down\) for each layer"):
        stack(norms, posts, eps, tensors[:-4], info[:-3], *heads)
    with pytest.raises(RuntimeError, match="layer 0 linear 0: unknown kind 99"):
        stack(norms, posts, eps, tensors, [99, *info[1:]], *heads)
    with pytest.raises(RuntimeError, match="layer 1 linear 2 has no weights"):
        at = (4 + 2) * 4  # layer 1's third linear
        stack(norms, posts, eps, [*tensors[:at], None, *tensors[at + 1 :]], info, *heads)
    with pytest.raises(RuntimeError, match="heads must be a multiple of kv_heads"):
        stack(norms, posts, eps, tensors, info, 3, 2)


def test_bad_decode_steps_are_refused_clearly_and_write_nothing(tiny_runner):
    ops = cpu_kernels.load()
    norms, posts, eps, tensors, info, heads = layer_weights(tiny_runner)
    stack = torch.classes.radixrt.DecodeStack(norms, posts, eps, tensors, info, *heads)
    pool = filled_pool(tiny_runner)
    ks, vs = pool.k_buffers, pool.v_buffers
    cos = sin = torch.ones(1, 8, dtype=torch.bfloat16)
    rows = (torch.tensor([3]), torch.arange(1, 4), torch.tensor([0]), torch.tensor([3]), 0.25)

    def step(k=ks, v=vs, slots=rows[0], attention=0):
        hidden = torch.zeros(1, 64, dtype=torch.bfloat16)
        return ops.decode_layers(stack, hidden, cos, sin, k, v, slots, *rows[1:], attention, 8)

    before = [buf.clone() for buf in [*ks, *vs]]
    with pytest.raises(RuntimeError, match="one pool for each of 2 layers"):
        step(k=ks[:1])
    with pytest.raises(RuntimeError, match="unknown attention kernel 7"):
        step(attention=7)
    with pytest.raises(RuntimeError, match=r"layer 1: k_pool and v_pool must be contiguous \[slots, kv_heads"):
        step(k=[ks[0], ks[1].flatten(1)])
    with pytest.raises(RuntimeError, match="layer 1: k_pool and v_pool must be contiguous"):
        step(v=[vs[0], vs[1].float()])
    for slots, message in (
        (torch.tensor([ks[0].shape[0]]), "KV slot .* is outside the pool"),
        (torch.tensor([-1]), "KV slot -1 is outside the pool"),
        (torch.tensor([3], dtype=torch.int32), "one contiguous int64 slot per token"),
    ):
        with pytest.raises(RuntimeError, match=message):
            step(slots=slots)
    assert all(torch.equal(a, b) for a, b in zip(before, [*ks, *vs], strict=True))  # nothing written
    out, residual = step()
    assert out.shape == residual.shape == (1, 64)
    assert not torch.equal(ks[1][3], before[1][3])  # a good step writes every layer's K
