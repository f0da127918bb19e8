"""Safetensors loading (single file and sharded), its errors, and dummy weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from radixrt.radix_cache.pool import KVPool
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.model_runner import ModelRunner

CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 64,
    "max_position_embeddings": 64,
}


def save_tiny(path, **save_kwargs):
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(LlamaConfig(**CONFIG))
    hf.save_pretrained(path, safe_serialization=True, **save_kwargs)
    return hf


def last_logits(runner: ModelRunner) -> torch.Tensor:
    pool = KVPool(16, *runner.kv_shape(), dtype=runner.dtype)
    batch = ForwardBatch.build([[1, 2, 3, 4]], [pool.alloc(4)])
    return runner.forward(batch, pool)


def test_sharded_checkpoint_loads_every_shard(tmp_path):
    hf = save_tiny(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    runner = ModelRunner(tmp_path, dtype="float32", device="cpu")
    with torch.no_grad():
        expected = hf(torch.tensor([[1, 2, 3, 4]])).logits[0, -1:]
    torch.testing.assert_close(last_logits(runner), expected, rtol=1e-4, atol=1e-4)


def test_missing_tensor_is_named_in_the_error(tmp_path):
    save_tiny(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing model\.layers\.1\.mlp\.up_proj\.weight"):
        ModelRunner(tmp_path, dtype="float32", device="cpu")


def test_unexpected_tensor_is_named_in_the_error(tmp_path):
    save_tiny(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.0.mystery.weight"] = torch.zeros(2)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected model\.layers\.0\.mystery\.weight"):
        ModelRunner(tmp_path, dtype="float32", device="cpu")


def test_dummy_weights_need_only_config_json(tmp_path):
    config = dict(CONFIG, architectures=["LlamaForCausalLM"], tie_word_embeddings=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        ModelRunner(tmp_path, device="cpu")
    runner = ModelRunner(tmp_path, dtype="bfloat16", device="cpu", load_format="dummy")
    logits = last_logits(runner)
    assert logits.shape == (1, 64) and torch.isfinite(logits).all() and logits.std() > 0
    assert runner.bytes_per_slot() == 2 * 2 * 2 * 8 * 2
    assert runner.suggest_num_slots() >= 2
