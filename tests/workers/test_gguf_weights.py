"""`--quantization gguf`: tiny random llama and qwen2 models written as GGUF files with Q8_0 and
Q4_1 tensors (and one fused projection of mixed types, which is widened), served from the file's
quantized tensors: logits of a float64 model on the same (dequantized) weights and rounded
activations; the embedded
model through the Engine; folders without a usable GGUF source refused clearly."""

from __future__ import annotations

import gguf
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import radixrt
from radixrt.radix_cache.pool import KVPool
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.gguf_import import import_gguf, read_metadata
from radixrt.workers.gguf_weights import gguf_backend
from radixrt.workers.layers.gguf_linear import Q4_1, Q8_0, GGUFLinear
from radixrt.workers.layers.quantization import quantize_rows
from radixrt.workers.model_runner import ModelRunner
from radixrt.workers.model_store import embedded_gguf
from tests.workers.test_gguf_import import tiny_model, write_gguf

# layer 0 attention and layer 1 MLP in Q8_0, the rest in Q4_1; layer 1's v differs from its q/k
TYPES = {
    **{f"blk.0.attn_{p}.weight": Q8_0 for p in ("q", "k", "v", "output")},
    **{f"blk.0.ffn_{p}.weight": Q4_1 for p in ("gate", "up", "down")},
    **{f"blk.1.attn_{p}.weight": Q4_1 for p in ("q", "k", "output")},
    "blk.1.attn_v.weight": Q8_0,
    **{f"blk.1.ffn_{p}.weight": Q8_0 for p in ("gate", "up", "down")},
    "output.weight": Q4_1,
    "token_embd.weight": Q8_0,
}
IDS = [1, 504, 3458, 28, 17, 905, 2, 42, 9001, 77, 12, 30000]


@pytest.fixture(scope="module")
def tokenizer_meta() -> dict:
    return read_metadata(gguf.GGUFReader(embedded_gguf()))


def imported(tmp_path, arch: str, tokenizer_meta: dict):
    model = tiny_model(arch)
    path = write_gguf(tmp_path / f"tiny-{arch}.gguf", model, arch, tokenizer_meta, "llama-bpe", TYPES)
    return path, import_gguf(path, tmp_path / "folder", progress=False)


def logits(runner: ModelRunner, ids: list[int]) -> torch.Tensor:
    pool = KVPool(len(ids) + 1, *runner.kv_shape(), dtype=runner.dtype)
    batch = ForwardBatch.build([ids], [list(range(1, len(ids) + 1))], [list(range(len(ids)))])
    return runner.forward(batch, pool).double()


class RoundedActivations(nn.Module):
    """`linear` in float64 on activations rounded as the kernels round them (int8 per 32 values)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        xq, sx = quantize_rows(flat)
        rounded = (xq.double() * sx.double()[..., None]).flatten(1)[:, : flat.shape[1]]
        return self.linear(rounded.reshape(x.shape))


def float64_reference(folder, served: list[str]) -> nn.Module:
    """The folder's (dequantized) weights in float64, the `served` linears on rounded activations."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64)
    for name in served:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, RoundedActivations(getattr(owner, child)))
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_gguf_models_quantized_tensors_give_the_float64_models_logits(arch, tokenizer_meta, tmp_path):
    _, folder = imported(tmp_path, arch, tokenizer_meta)
    runner = ModelRunner(folder, dtype="float32", device="cpu", quantization="gguf")
    lm_head = "4 Q4_1, 4 Q8_0" if arch == "llama" else "3 Q4_1, 5 Q8_0"  # qwen2 ties the head to token_embd
    assert runner.kernels["linear"] == f"gguf (cpu_kernels): {lm_head} linears as stored, 1 widened"
    layer1 = runner.model.model.layers[1]
    assert not isinstance(layer1.self_attn.qkv_proj, GGUFLinear)  # mixed Q4_1/Q8_0 parts: widened
    assert layer1.mlp.gate_up_proj.tensor_type == Q8_0
    # the folder holds the same weights dequantized (q/k rows in HF's rope order)
    served = ["lm_head", "model.layers.1.self_attn.o_proj"] + [
        f"model.layers.{i}.{p}"
        for i in (0, 1)
        for p in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
        + (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj") if i == 0 else ())
    ]
    ids = torch.tensor([IDS])
    with torch.no_grad():
        expected = float64_reference(folder, served)(ids).logits[0]
        plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64)(ids).logits[0]
    got = logits(runner, IDS)
    # an activation a hair from a rounding boundary may round the other way in float32
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)
    assert (got - plain).abs().max().item() > 1e-2  # the activations really are rounded


def test_folders_without_their_gguf_file_are_refused(tokenizer_meta, tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="was not made by `radixrt import-gguf`"):
        ModelRunner(tiny_model_dir, dtype="float32", device="cpu", quantization="gguf")
    path, folder = imported(tmp_path, "llama", tokenizer_meta)
    path.unlink()
    with pytest.raises(ValueError, match="is gone or changed; import it again"):
        ModelRunner(folder, dtype="float32", device="cpu", quantization="gguf")
    with pytest.raises(ValueError, match="runs on CPU only"):
        gguf_backend(torch.device("cuda"))


def test_the_engine_serves_the_embedded_models_q4_1_tensors_and_says_so():
    with radixrt.Engine(model="default", dtype="bfloat16", quantization="gguf", kv_slots=1024) as engine:
        out = engine.generate("The capital of France is", {"temperature": 0, "max_new_tokens": 6})
        assert "Paris" in out["text"]
        assert (
            engine.stats()["kernels"]["linear"] == "gguf (cpu_kernels): 120 Q4_1, 1 Q8_0 linears as stored, 0 widened"
        )


def test_serve_help_documents_the_gguf_mode():
    import argparse

    from radixrt.runtime.config import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    text = " ".join(parser.format_help().split())  # help with a "%" in it used to raise here
    assert "gguf (the linears of the GGUF file the model was imported from, Q8_0 and Q4_1 as stored; CPU)" in text
    with pytest.raises(ValueError, match="quantization must be one of none, int8, gguf"):
        ServerArgs(quantization="q4")
