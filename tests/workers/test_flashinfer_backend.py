"""The flashinfer backend against the torch reference, on random q/k/v (CUDA only)."""

from __future__ import annotations

import pytest
import torch

from radixrt.radix_cache.pool import KVPool
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers.attention import create_backend

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("flashinfer")

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 8, 2, 64, 2
MIXED = [(0, 7), (5, 1), (12, 4), (30, 1), (0, 1)]  # (cached prefix, new tokens) per request
DECODE = [(5, 1), (17, 1), (0, 1), (63, 1)]


def make_batch(pool: KVPool, requests: list[tuple[int, int]]) -> ForwardBatch:
    new_ids = [[1] * new for _, new in requests]
    slots = [pool.alloc(prefix + new) for prefix, new in requests]
    return ForwardBatch.build(new_ids, slots, device="cuda")


def run_layers(backend, batch: ForwardBatch, pool: KVPool, qkv: list) -> list[torch.Tensor]:
    backend.prepare(batch)
    return [backend.attend(q, k, v, layer, pool) for layer, (q, k, v) in enumerate(qkv)]


@pytest.mark.parametrize("requests", [MIXED, DECODE], ids=["mixed", "decode"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flashinfer_matches_torch_reference(requests, dtype):
    torch.manual_seed(0)
    pool = KVPool(512, LAYERS, KV_HEADS, HEAD_DIM, dtype=dtype, device="cuda")
    for buf in pool.k_buffers + pool.v_buffers:
        buf.normal_()  # cached prefixes hold random K/V
    batch = make_batch(pool, requests)
    tokens = batch.num_tokens
    qkv = [
        (
            torch.randn(tokens, HEADS, HEAD_DIM, dtype=dtype, device="cuda"),
            torch.randn(tokens, KV_HEADS, HEAD_DIM, dtype=dtype, device="cuda"),
            torch.randn(tokens, KV_HEADS, HEAD_DIM, dtype=dtype, device="cuda"),
        )
        for _ in range(LAYERS)
    ]
    common = {"num_heads": HEADS, "num_kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "dtype": dtype}
    reference = run_layers(create_backend("torch", "cuda", **common), batch, pool, qkv)
    flash = run_layers(create_backend("flashinfer", "cuda", **common), batch, pool, qkv)
    for layer, (ref, out) in enumerate(zip(reference, flash)):
        assert out.shape == (tokens, HEADS * HEAD_DIM)
        torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
        _, k, v = qkv[layer]
        torch.testing.assert_close(pool.k_buffers[layer][batch.out_slots], k)
        torch.testing.assert_close(pool.v_buffers[layer][batch.out_slots], v)
