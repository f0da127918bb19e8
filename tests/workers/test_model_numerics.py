"""Our llama-family model vs. transformers on the same tiny random weights.

Each scenario runs mixed batches over one KV pool: fresh prompts of different lengths, a
request whose prefix was computed by an earlier forward, batched decode steps with different
sequence lengths, and a batch mixing decode with extends. Every returned logit row is compared
with transformers' logits for the same position of the full sequence.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from radixrt.radix_cache.pool import KVPool
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers.quantization import dequantize, quantize_int8, quantize_rows
from radixrt.workers.model_runner import ModelRunner

SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "initializer_range": 0.1,
}
CONFIGS = {
    "llama_tied": lambda: LlamaConfig(**SHAPE, num_hidden_layers=2, tie_word_embeddings=True),
    "llama3_rope_bias": lambda: LlamaConfig(
        **SHAPE,
        num_hidden_layers=3,
        attention_bias=True,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
    "qwen2_bias": lambda: Qwen2Config(**SHAPE, num_hidden_layers=2),
    "mistral_linear_rope": lambda: MistralConfig(
        **{**SHAPE, "num_key_value_heads": 1},
        num_hidden_layers=2,
        sliding_window=None,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny_model(request, tmp_path_factory):
    return make_tiny_model(request.param, tmp_path_factory)


def make_tiny_model(name: str, tmp_path_factory, **overrides):
    """(checkpoint folder, transformers model in float32) with non-trivial norms and biases;
    `overrides` set attributes of the config (e.g. a wider head for flashinfer)."""
    torch.manual_seed(0)
    config = CONFIGS[name]()
    for key, value in overrides.items():
        setattr(config, key, value)
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for param_name, param in hf.named_parameters():
            if param_name.endswith("norm.weight"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            elif param_name.endswith("bias"):
                param.copy_(0.2 * torch.randn_like(param))
    path = tmp_path_factory.mktemp(name)
    hf.save_pretrained(path, safe_serialization=True)
    return path, hf


@dataclass
class Seq:
    """One request: its full token list and the slots of the tokens computed so far."""

    tokens: list[int]
    done: int = 0
    slots: list[int] = field(default_factory=list)


def run_step(runner: ModelRunner, pool: KVPool, steps: list[tuple[Seq, int, bool]]):
    """One forward. Each entry: (request, new tokens, return logits for all new rows?).

    Returns per entry (logits [rows, vocab], positions of those rows).
    """
    new_ids, seq_slots, logit_rows, positions = [], [], [], []
    for seq, n, all_rows in steps:
        seq.slots += pool.alloc(n).tolist()
        new_ids.append(seq.tokens[seq.done : seq.done + n])
        seq_slots.append(list(seq.slots))
        rows = list(range(n)) if all_rows else [n - 1]
        logit_rows.append(rows)
        positions.append([seq.done + r for r in rows])
        seq.done += n
    batch = ForwardBatch.build(new_ids, seq_slots, logit_rows, device=runner.device)
    logits = runner.forward(batch, pool)
    assert logits.dtype == torch.float32
    assert logits.shape == (sum(len(r) for r in logit_rows), runner.model_config.vocab_size)
    return list(zip(logits.split([len(r) for r in logit_rows]), positions))


def scenario(runner: ModelRunner, pool: KVPool, vocab: int):
    """Yields (request, logits, positions) across six forwards covering every batch shape."""
    g = torch.Generator().manual_seed(1)
    a, b, c, d = (Seq(torch.randint(0, vocab, (n,), generator=g).tolist()) for n in (12, 20, 16, 9))
    plan = [
        [(c, 6, True)],  # c's prefix, cached before c is extended
        [(a, 9, True), (b, 17, False), (c, 5, True)],  # mixed lengths + cached prefix
        [(a, 1, True), (b, 1, True), (c, 1, True)],  # decode, different sequence lengths
        [(a, 1, True), (d, 7, True), (c, 3, True)],  # decode mixed with extends
        [(a, 1, True), (b, 1, True), (c, 1, True), (d, 1, True)],  # decode
        [(d, 1, True)],  # a single token (CPU bf16 takes another matmul path)
    ]
    for steps in plan:
        for (seq, _, _), (logits, pos) in zip(steps, run_step(runner, pool, steps)):
            yield seq, logits, pos


def reference_logits(hf, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0].float()  # [len, vocab]


def test_logits_match_transformers_in_float32(tiny_model):
    path, hf = tiny_model
    runner = ModelRunner(path, dtype="float32", device="cpu", attention_backend="torch")
    pool = KVPool(128, *runner.kv_shape(), dtype=torch.float32)
    checked = 0
    for seq, logits, pos in scenario(runner, pool, runner.model_config.vocab_size):
        expected = reference_logits(hf, seq.tokens)[pos]
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
        checked += len(pos)
    assert checked == 6 + 9 + 1 + 5 + 3 + 1 + 7 + 3 + 4 + 1


def test_bfloat16_logits_are_close_and_greedy_tokens_match(tiny_model):
    path, hf = tiny_model
    runner = ModelRunner(path, dtype="bfloat16", device="cpu", attention_backend="torch")
    assert runner.dtype == torch.bfloat16
    pool = KVPool(128, *runner.kv_shape(), dtype=torch.bfloat16)
    compared = 0
    for seq, logits, pos in scenario(runner, pool, runner.model_config.vocab_size):
        expected = reference_logits(hf, seq.tokens)[pos]
        scale = expected.abs().max()
        assert (logits - expected).abs().max() < 0.05 * scale
        top2 = expected.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 0.05 * scale  # rows where bf16 noise cannot flip it
        assert torch.equal(logits.argmax(-1)[clear], expected.argmax(-1)[clear])
        compared += int(clear.sum())
    assert compared >= 15  # of 40 rows; most have a clear winner


def test_prefix_cached_extend_equals_one_shot_prefill(tiny_model):
    path, _ = tiny_model
    runner = ModelRunner(path, dtype="float32", device="cpu", attention_backend="torch")
    pool = KVPool(64, *runner.kv_shape(), dtype=torch.float32)
    tokens = torch.arange(3, 23).tolist()
    ((one_shot, _),) = run_step(runner, pool, [(Seq(tokens), 20, True)])
    cached = Seq(tokens)
    run_step(runner, pool, [(cached, 12, False)])
    ((extended, _),) = run_step(runner, pool, [(cached, 8, True)])
    torch.testing.assert_close(extended, one_shot[12:], rtol=1e-5, atol=1e-5)


class Int8Reference(torch.nn.Module):
    """A linear as `--quantization int8` computes it, in float64: int8 weights with per-channel
    scales, activations rounded to int8 per group (`quantize_rows`), no other rounding."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        q, scale = quantize_int8(linear.weight)
        self.weight = torch.nn.Parameter(dequantize(q, scale).double(), requires_grad=False)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().double())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        xq, sx = quantize_rows(flat)
        rounded = (xq.double() * sx.double()[..., None]).flatten(1)[:, : flat.shape[1]]
        y = torch.nn.functional.linear(rounded, self.weight, self.bias)
        return y.reshape(*x.shape[:-1], -1)


def int8_reference(hf) -> torch.nn.Module:
    """`hf` in float64 with every linear (the LM head too, untied from the embedding) replaced."""
    ref = copy.deepcopy(hf).double()
    for module in list(ref.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, Int8Reference(child))
    return ref


def test_int8_logits_match_a_float64_reference(tiny_model):
    path, hf = tiny_model
    runner = ModelRunner(path, dtype="float32", device="cpu", attention_backend="torch", quantization="int8")
    assert runner.kernels["linear"] == "int8 (cpu_kernels)"
    ref = int8_reference(hf)
    pool = KVPool(128, *runner.kv_shape(), dtype=torch.float32)
    worst = 0.0
    for seq, logits, pos in scenario(runner, pool, runner.model_config.vocab_size):
        expected = reference_logits(ref, seq.tokens)[pos]
        # an activation a hair from a rounding boundary may round the other way in float32
        torch.testing.assert_close(logits, expected, rtol=2e-3, atol=2e-3)
        worst = max(worst, (logits - reference_logits(hf, seq.tokens)[pos]).abs().max().item())
    assert worst > 1e-2  # the weights and activations really are quantized: the plain model differs
