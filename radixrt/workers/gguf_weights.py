"""`--quantization gguf`: serve the linears of the GGUF file a model folder was imported from with
their quantized tensors as stored (Q8_0 and Q4_1, layers/gguf_linear.py), not widened.

The folder (from `radixrt import-gguf` or the embedded model) still provides the config, the
tokenizer and every other tensor (norms, embeddings, any linear stored in another format), widened
as for `--quantization none`. The GGUF file is memory-mapped and its linears' rows read once: a
fused projection (q/k/v, gate/up) is served quantized when all its parts share one served type,
and q/k rows are put back in HF's rope order as the importer does (a row permutation, so it applies
to quantized rows unchanged).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import gguf
import numpy as np
import torch
from torch import nn

from radixrt.workers.gguf_import import ARCHITECTURES, MARKER, hf_tensor_name, unpermute_rope
from radixrt.workers.layers import cpu_kernels
from radixrt.workers.layers.gguf_linear import SERVED_TYPES, GGUFLinear
from radixrt.workers.model_config import ModelConfig


def source_gguf(folder: Path) -> Path:
    """The GGUF file `folder` was imported from (the import's marker names it)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        raise ValueError(
            f"--quantization gguf serves the tensors of the GGUF file a model folder was imported from; "
            f"{folder} was not made by `radixrt import-gguf` (no readable {MARKER})"
        ) from None
    candidates = [Path(marker["source_path"])] if marker.get("source_path") else []
    if marker.get("source") is not None:
        from radixrt.workers.model_store import embedded_gguf  # folders imported before source_path was kept

        try:
            candidates.append(embedded_gguf())
        except FileNotFoundError:
            pass
    for path in candidates:
        if path.name == marker.get("source") and path.is_file() and path.stat().st_size == marker.get("source_bytes"):
            return path
    raise ValueError(
        f"--quantization gguf: the GGUF file {folder} was imported from ({marker.get('source_path') or marker.get('source')}) "
        "is gone or changed; import it again with `radixrt import-gguf FILE OUT_DIR`"
    )


def gguf_backend(device: torch.device) -> str:
    """What runs GGUF linears on `device`: "cpu_kernels", or "torch" (the float64 reference)."""
    if device.type != "cpu":
        raise ValueError(f"--quantization gguf runs on CPU only, not on {device.type}")
    return "cpu_kernels" if cpu_kernels.load() is not None else "torch"


def fused_parts(config: ModelConfig) -> dict[str, list[str]]:
    """Each linear module of the fused model -> the HF weight names whose rows it concatenates."""
    parts = {"lm_head": ["model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"]}
    for i in range(config.num_hidden_layers):
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        parts[f"{attn}.qkv_proj"] = [f"{attn}.{p}_proj.weight" for p in "qkv"]
        parts[f"{attn}.o_proj"] = [f"{attn}.o_proj.weight"]
        parts[f"{mlp}.gate_up_proj"] = [f"{mlp}.gate_proj.weight", f"{mlp}.up_proj.weight"]
        parts[f"{mlp}.down_proj"] = [f"{mlp}.down_proj.weight"]
    return parts


def gguf_linears(path: Path, config: ModelConfig, model: nn.Module, backend: str) -> dict[str, GGUFLinear]:
    """The model's linears that `path` stores in a served type, as GGUFLinears (module name -> module);
    each keeps the bias of the model's own (loaded, fused) linear."""
    reader = gguf.GGUFReader(path)
    tensors = {hf_tensor_name(t.name): t for t in reader.tensors}
    arch_name = reader.fields["general.architecture"].contents()
    rope_permuted = ARCHITECTURES[arch_name].rope_permuted
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    out = {}
    for module, names in fused_parts(config).items():
        parts = [tensors.get(name) for name in names]
        types = {t.tensor_type for t in parts if t is not None}
        if None in parts or len(types) != 1 or next(iter(types)) not in SERVED_TYPES:
            continue
        rows = []
        for name, tensor in zip(names, parts, strict=True):
            raw = torch.from_numpy(np.array(tensor.data, dtype=np.uint8))  # [N, row bytes]; copied off the map
            kind = name.split(".")[-2]
            if rope_permuted and kind in heads:
                raw = unpermute_rope(raw, heads[kind])
            rows.append(raw)
        linear = model.get_submodule(module)
        out[module] = GGUFLinear(parts[0].tensor_type, torch.cat(rows), linear.in_features, linear.bias, backend)
    return out


def serve_gguf_tensors(model: nn.Module, folder: Path, device: torch.device) -> str:
    """Replace the fused model's linears (the LM head included) by the GGUF file's quantized
    tensors where it stores them as Q8_0 or Q4_1; returns a summary of what serves what."""
    backend = gguf_backend(device)
    model.untie_head()
    linears = gguf_linears(source_gguf(folder), model.config, model, backend)
    for name, linear in linears.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, linear)
    counts = collections.Counter(linear.tensor_type.name for linear in linears.values())
    widened = len(fused_parts(model.config)) - len(linears)
    served = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
    return f"gguf ({backend}): {served or 'no'} linears as stored, {widened} widened"
