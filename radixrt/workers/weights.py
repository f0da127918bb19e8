"""Fill a model's parameters from an HF folder's safetensors, or with random dummy weights.

Checkpoint tensor names equal the model's parameter names, so loading is a dict lookup.
Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

# Tensors some checkpoints carry that the model recomputes or shares.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The folder's shards (from `model.safetensors.index.json` if present), in order."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    return sorted(model_dir.glob("*.safetensors"))


def iter_safetensors(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of every shard, read lazily one at a time."""
    files = safetensors_files(model_dir)
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_dir} (load_format='dummy' uses random weights)")
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)


def load_safetensors(model: nn.Module, model_dir: str | Path) -> None:
    """Copy every checkpoint tensor into the parameter of the same name (casting dtype).

    Raises ValueError naming the tensors when the checkpoint lacks a parameter, has a tensor
    the model does not know, or a shape differs.
    """
    params = dict(model.named_parameters())
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    loaded: set[str] = set()
    unexpected: list[str] = []
    for name, tensor in iter_safetensors(model_dir):
        if name.endswith(_IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
            continue
        param = params.get(name)
        if param is None:
            unexpected.append(name)
            continue
        if param.shape != tensor.shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(tensor)
        loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint in {model_dir} does not match the model: "
            f"missing {_preview(missing)}, unexpected {_preview(unexpected)}"
        )


def init_dummy_weights(model: nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Random weights from the config alone: norms at 1, everything else N(0, std)."""
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            if param.device not in generators:
                generators[param.device] = torch.Generator(param.device).manual_seed(seed)
            param.normal_(0.0, std, generator=generators[param.device])


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes: what the KV a model computes
    depends on (file names, sizes or times would miss a re-saved or edited checkpoint)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        digest.update(f"{name}:{param.dtype}:{tuple(param.shape)};".encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def _preview(names: list[str], limit: int = 8) -> str:
    if not names:
        return "none"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
