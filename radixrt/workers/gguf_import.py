"""Convert a llama-family GGUF file into an HF-style folder radixrt (and transformers) can load.

Output: config.json, model.safetensors (float32, HF tensor names), tokenizer.json,
tokenizer_config.json, generation_config.json and radixrt_import.json (where it came from).
The folder is built next to `out_dir` and renamed into place, so it is either complete or absent.

    radixrt import-gguf model.gguf ./model-folder
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from radixrt.workers.gguf_tokenizer import build_tokenizer, tokenizer_config
from radixrt.workers.model_store import IMPORT_FORMAT, MARKER, is_complete

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Arch:
    hf_class: str
    model_type: str
    # llama.cpp's llama converter reorders q/k rows for its rope layout; qwen2's does not.
    rope_permuted: bool
    attention_bias: bool


ARCHITECTURES = {
    "llama": _Arch("LlamaForCausalLM", "llama", rope_permuted=True, attention_bias=False),
    "qwen2": _Arch("Qwen2ForCausalLM", "qwen2", rope_permuted=False, attention_bias=True),
}

_TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_PER_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def import_gguf(gguf_path: str | Path, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Convert `gguf_path` into the folder `out_dir` (which must not exist, or be empty).

    If another importer finishes the same `out_dir` first, its folder is kept and returned.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} already exists and is not an empty folder")
    reader = gguf.GGUFReader(gguf_path)
    meta = read_metadata(reader)
    config = build_config(meta, {tensor.name for tensor in reader.tensors})
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_folder(tmp, reader, meta, config, gguf_path, progress)
        return _move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """All key/value fields of the file as Python values."""
    return {name: field.contents() for name, field in reader.fields.items()}


def build_config(meta: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
    """HF `config.json` for the GGUF's architecture, from its metadata and the tensors it holds."""
    arch_name = meta.get("general.architecture")
    if arch_name not in ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch_name!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[arch_name]

    def key(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch_name}.{name}", default)

    scaling = key("rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"GGUF rope scaling {scaling!r} is not supported")
    hidden, heads = key("embedding_length"), key("attention.head_count")
    return {
        "architectures": [arch.hf_class],
        "model_type": arch.model_type,
        "vocab_size": key("vocab_size") or len(meta["tokenizer.ggml.tokens"]),
        "hidden_size": hidden,
        "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": key("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv", heads),
        "head_dim": key("attention.key_length", hidden // heads),
        "hidden_act": "silu",
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon"),
        "rope_theta": key("rope.freq_base", 10000.0),
        "max_position_embeddings": key("context_length"),
        "attention_bias": arch.attention_bias,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }


def convert_tensors(
    reader: gguf.GGUFReader, config: dict[str, Any], *, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Dequantize every tensor to float32 under its HF name, undoing llama.cpp's q/k rope reorder."""
    arch = ARCHITECTURES[config["model_type"]]
    out = {}
    for tensor in tqdm(reader.tensors, desc="importing GGUF tensors", unit="tensor", disable=not progress):
        name = hf_tensor_name(tensor.name)
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        weight = torch.from_numpy(np.array(data, dtype=np.float32))  # copy: the reader memory-maps
        weight = weight.reshape(tuple(reversed(tensor.shape.tolist())))  # GGUF lists dims innermost first
        if arch.rope_permuted and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
            weight = unpermute_rope(weight, heads)
        out[name] = weight.contiguous()
    return out


def hf_tensor_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    if gguf_name in _TOP_LEVEL:
        return _TOP_LEVEL[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _PER_LAYER:
        return f"model.layers.{parts[1]}.{_PER_LAYER[parts[2]]}.{parts[3]}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no HF equivalent this importer knows")


def unpermute_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Invert llama.cpp's q/k row order.

    HF rotates the two halves of each head (rows i and i + d/2 pair up); llama.cpp rotates adjacent
    rows (2i, 2i + 1), so its converter interleaved the halves. Per head, GGUF row 2i + h holds
    HF row h * d/2 + i; here we put each back.
    """
    rows, cols = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, half, 2, cols).transpose(1, 2).reshape(rows, cols)  # [heads*2*half, cols]


def _write_folder(
    folder: Path, reader: gguf.GGUFReader, meta: dict[str, Any], config: dict[str, Any], src: Path, progress: bool
) -> None:
    tensors = convert_tensors(reader, config, progress=progress)
    generation = {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    _write_json(folder / "config.json", config)
    _write_json(folder / "generation_config.json", generation)
    _write_json(folder / "tokenizer_config.json", tokenizer_config(meta, config["max_position_embeddings"]))
    build_tokenizer(meta).save(str(folder / "tokenizer.json"))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    marker = {
        "format": IMPORT_FORMAT,
        "source": src.name,
        "source_bytes": src.stat().st_size,
        "source_path": str(src.resolve()),  # where `--quantization gguf` reads the quantized tensors
    }
    _write_json(folder / MARKER, marker)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _move_into_place(tmp: Path, out_dir: Path) -> Path:
    """Rename the finished folder to `out_dir`; if a concurrent importer got there first, keep theirs."""
    # mkdtemp (and safetensors) create owner-only entries; the cache is meant to be shared read-only.
    os.chmod(tmp, 0o755)
    for path in tmp.iterdir():
        os.chmod(path, 0o644)
    try:
        os.rename(tmp, out_dir)  # atomic; replaces `out_dir` only if it is an empty folder
    except OSError:
        if not is_complete(out_dir):
            raise
        logger.info("%s was imported concurrently; keeping that copy", out_dir)
    return out_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `radixrt import-gguf`."""
    parser.add_argument("gguf_file", type=Path, help="llama-family .gguf file to convert")
    parser.add_argument("out_dir", type=Path, help="folder to create (must not exist or be empty)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    """Run `radixrt import-gguf`; prints the folder it wrote."""
    if not args.gguf_file.is_file():
        print(f"error: {args.gguf_file} is not a file", file=sys.stderr)
        return 2
    try:
        out = import_gguf(args.gguf_file, args.out_dir, progress=not args.no_progress)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0
