"""ModelConfig reads both transformers-4 and transformers-5 config.json layouts."""

from __future__ import annotations

import json

import pytest

from radixrt.workers.model_config import ModelConfig, RopeScaling

BASE = {
    "vocab_size": 100,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def test_transformers4_layout_with_linear_rope_and_eos_list():
    cfg = ModelConfig.from_dict(
        dict(
            BASE,
            architectures=["MistralForCausalLM"],
            rope_theta=1e6,
            rope_scaling={"type": "linear", "factor": 4.0},
            eos_token_id=[2, 7],
            torch_dtype="bfloat16",
            max_position_embeddings=2048,
        )
    )
    assert cfg.rope_theta == 1e6
    assert cfg.rope_scaling == RopeScaling("linear", 4.0, original_max_position_embeddings=2048)
    assert cfg.eos_token_ids == (2, 7)
    assert cfg.torch_dtype == "bfloat16"
    assert cfg.head_dim == 16 and cfg.num_queries_per_kv == 2


def test_transformers5_layout_with_llama3_rope(tmp_path):
    rope = {
        "rope_type": "llama3",
        "rope_theta": 5e5,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    d = dict(
        BASE,
        architectures=["LlamaForCausalLM"],
        rope_parameters=rope,
        eos_token_id=3,
        head_dim=32,
        dtype="float32",
    )
    (tmp_path / "config.json").write_text(json.dumps(d))
    cfg = ModelConfig.from_dir(tmp_path)
    assert cfg.rope_theta == 5e5 and cfg.rope_scaling.rope_type == "llama3"
    assert cfg.head_dim == 32 and cfg.eos_token_ids == (3,) and cfg.torch_dtype == "float32"
    assert not cfg.attention_bias


def test_qwen2_has_qkv_bias_without_a_config_field():
    cfg = ModelConfig.from_dict(dict(BASE, model_type="qwen2"))
    assert cfg.architecture == "Qwen2ForCausalLM" and cfg.attention_bias


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "unsupported architectures"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "unsupported rope scaling"),
        ({"num_key_value_heads": 3}, "multiple of"),
        ({"hidden_act": "gelu"}, "SiLU"),
        ({"vocab_size": 0}, "vocab_size"),
    ],
)
def test_unsupported_or_invalid_configs_are_rejected(change, message):
    d = {**BASE, "architectures": ["LlamaForCausalLM"], **change}
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(d)
