"""Tiny random llama folders that use the embedded model's tokenizer and chat template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def write_tiny_llama(out: Path, embedded_model_dir: Path, **config_overrides: Any) -> Path:
    """A 2-layer random llama (seed 0) saved as an HF folder in `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = json.loads((embedded_model_dir / "config.json").read_text())["vocab_size"]
    settings = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                    tie_word_embeddings=True, eos_token_id=2, bos_token_id=1)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{**settings, **config_overrides})).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (embedded_model_dir / name).exists():
            shutil.copy(embedded_model_dir / name, out / name)
    return out
