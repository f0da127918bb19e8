"""The GGUF exporter (the llama.cpp baseline's bf16 / f16 files): it writes exactly the weights
of the model folder, in llama.cpp's layout, and radixrt's own GGUF importer reads them back."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from radixrt.bench.gguf_export import export_gguf, exported_gguf, permute_rope
from radixrt.workers.gguf_import import import_gguf, unpermute_rope
from radixrt.workers.model_store import embedded_gguf


def test_rope_permutation_is_the_importers_inverse():
    weight = np.arange(12 * 5, dtype=np.float32).reshape(12, 5)  # 3 heads of 4 rows
    permuted = permute_rope(weight, heads=3)
    assert not np.array_equal(permuted, weight)
    assert np.array_equal(unpermute_rope(torch.from_numpy(permuted), 3).numpy(), weight)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_export_then_import_gives_back_the_weights(dtype, bench_model_dir, tmp_path):
    path = export_gguf(bench_model_dir, tmp_path / "m.gguf", dtype=dtype, template=embedded_gguf())
    reader = gguf.GGUFReader(path)
    assert reader.fields["llama.block_count"].contents() == 2
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == 49152  # copied from the template
    matrices = {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2}
    assert matrices == {dtype.upper()}
    back = load_file(str(import_gguf(path, tmp_path / "back", progress=False) / "model.safetensors"))
    for name, weight in load_file(str(bench_model_dir / "model.safetensors")).items():
        expected = torch.from_numpy(weight).to(torch.bfloat16).float().numpy() if dtype == "bf16" else weight
        expected = weight if weight.ndim == 1 else expected  # norms stay float32
        assert np.array_equal(back[name], expected), name


def test_an_export_is_written_once_and_reused(bench_model_dir, tmp_path):
    first = exported_gguf(bench_model_dir, "f16", template=embedded_gguf(), cache_dir=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert exported_gguf(bench_model_dir, "f16", template=embedded_gguf(), cache_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp and first.name.endswith(".f16.gguf")
