"""Write a llama-family HF folder as a GGUF file llama.cpp loads: the llama.cpp baseline at a
chosen precision on exactly the weights radixrt runs.

The embedded model ships as Q4_1; radixrt dequantizes it (`workers/gguf_import.py`) to float32
and runs it in bf16. `bf16` here rounds the same float32 values the same way (to nearest even),
so llama.cpp and radixrt hold identical weights; `f16` keeps 3 more mantissa bits. Tokenizer and
chat-template fields are copied from a template GGUF (the embedded file), the architecture fields
come from config.json, and q/k rows get llama.cpp's rope order back (the inverse of
`gguf_import.unpermute_rope`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np

TENSOR_TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}
_TOP_LEVEL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}  # fmt: skip
_PER_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_COPIED_PREFIXES = ("tokenizer.", "general.")
_NOT_COPIED = {"general.architecture", "general.file_type", "general.quantization_version"}


def export_gguf(model_dir: str | Path, out: str | Path, *, dtype: str, template: str | Path) -> Path:
    """Write `model_dir` (config.json + safetensors, llama architecture) to `out` in `dtype`
    (f32 / f16 / bf16 for the matrices; norms stay f32). Written beside `out`, then renamed."""
    from safetensors.numpy import load_file

    tensor_type, file_type = TENSOR_TYPES[dtype]
    model_dir, out = Path(model_dir), Path(out)
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ValueError(f"only llama models are exported, not {config.get('model_type')!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        _copy_fields(writer, gguf.GGUFReader(template))
        _add_architecture(writer, config, file_type)
        for path in sorted(model_dir.glob("*.safetensors")):
            for name, weight in load_file(str(path)).items():
                _add_tensor(writer, name, weight.astype(np.float32), config, tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def gguf_tensor_name(hf_name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`."""
    if hf_name in _TOP_LEVEL:
        return _TOP_LEVEL[hf_name]
    parts = hf_name.split(".")
    module = ".".join(parts[3:-1])
    if parts[:2] != ["model", "layers"] or module not in _PER_LAYER:
        raise ValueError(f"tensor {hf_name!r} has no GGUF name this exporter knows")
    return f"blk.{parts[2]}.{_PER_LAYER[module]}.{parts[-1]}"


def permute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF q/k rows -> llama.cpp's order: per head, HF row h * d/2 + i goes to row 2i + h."""
    rows, cols = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, cols).swapaxes(1, 2).reshape(rows, cols)  # [heads*half*2, cols]


def _copy_fields(writer: gguf.GGUFWriter, template: gguf.GGUFReader) -> None:
    for name, field in template.fields.items():
        if name.startswith(_COPIED_PREFIXES) and name not in _NOT_COPIED:
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)


def _add_architecture(writer: gguf.GGUFWriter, config: dict[str, Any], file_type: int) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_file_type(file_type)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])


def _add_tensor(writer: gguf.GGUFWriter, name: str, weight: np.ndarray, config: dict, tensor_type: Any) -> None:
    if name.endswith(("q_proj.weight", "k_proj.weight")):
        heads = config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
        weight = permute_rope(weight, heads)
    if weight.ndim == 1 or tensor_type == gguf.GGMLQuantizationType.F32:  # norms stay float32
        writer.add_tensor(gguf_tensor_name(name), np.ascontiguousarray(weight))
        return
    data = gguf.quants.quantize(np.ascontiguousarray(weight), tensor_type)
    writer.add_tensor(gguf_tensor_name(name), data, raw_shape=data.shape, raw_dtype=tensor_type)


def exported_gguf(model_dir: str | Path, dtype: str, *, template: str | Path, cache_dir: Path) -> Path:
    """`model_dir` as a `dtype` GGUF under `cache_dir`, written on first use (keyed by the folder's
    path and its weights' size and time, so a changed folder is exported again)."""
    import hashlib

    model_dir = Path(model_dir).resolve()
    stamp = [str(model_dir)] + [
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(model_dir.glob("*.safetensors"))
    ]
    key = hashlib.sha1("|".join(stamp).encode()).hexdigest()[:10]
    out = cache_dir / f"{model_dir.name}-{key}.{dtype}.gguf"
    return out if out.is_file() else export_gguf(model_dir, out, dtype=dtype, template=template)
