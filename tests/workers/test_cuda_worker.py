"""The CUDA worker on tiny random models (CUDA and flashinfer only; `make gpu-check` runs them on a
lent GPU): logits against transformers for every architecture of test_model_numerics, decode steps
replayed from CUDA graphs against eager ones, and grammar masks on device logits."""

from __future__ import annotations

import pytest
import torch

from radixrt.constrained import allocate_token_bitmask, apply_token_bitmask_
from radixrt.radix_cache.pool import KVPool
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.model_runner import ModelRunner
from tests.workers.test_model_numerics import CONFIGS, make_tiny_model, reference_logits, scenario

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("flashinfer")


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny_model(request, tmp_path_factory):
    # flashinfer's kernels take heads of 64, 128 or 256 dims; test_model_numerics' are 16 wide
    return make_tiny_model(request.param, tmp_path_factory, hidden_size=256, head_dim=64)


def test_bfloat16_logits_match_transformers_with_flashinfer(tiny_model):
    path, hf = tiny_model
    runner = ModelRunner(path, dtype="bfloat16", device="cuda", attention_backend="flashinfer")
    pool = KVPool(128, *runner.kv_shape(), dtype=torch.bfloat16, device="cuda")
    compared = 0
    for seq, logits, pos in scenario(runner, pool, runner.model_config.vocab_size):
        expected = reference_logits(hf, seq.tokens)[pos]
        logits = logits.cpu()
        scale = expected.abs().max()
        assert (logits - expected).abs().max() < 0.05 * scale
        top2 = expected.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 0.05 * scale
        assert torch.equal(logits.argmax(-1)[clear], expected.argmax(-1)[clear])
        compared += int(clear.sum())
    assert compared >= 15


def _slots(i: int, length: int) -> list[int]:
    return list(range(200 * (i + 1), 200 * (i + 1) + length))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-layer random llama with no tokenizer (the embedded model does not travel to a GPU machine)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=1024)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return path


def test_decode_graph_replays_match_eager_steps(tiny_llama):
    runner = ModelRunner(tiny_llama, dtype="bfloat16", device="cuda", attention_backend="flashinfer")
    assert runner.graphs_supported() is None
    pools = [KVPool(2048, *runner.kv_shape(), dtype=runner.dtype, device="cuda") for _ in range(2)]
    prompts = [5, 40, 9, 77, 13, 2]
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, 32000, (n,), generator=gen).tolist() for n in prompts]
    first = ForwardBatch.build(ids, [_slots(i, n) for i, n in enumerate(prompts)], device="cuda")
    for pool in pools:
        runner.forward(first, pool)
    runner.capture_decode_graphs(pools[1], max_batch=4, max_kv_tokens=4096)
    lengths, tokens, running = list(prompts), [1000 + i for i in range(len(prompts))], list(range(len(prompts)))
    for step in range(24):
        batch = ForwardBatch.build([[tokens[i]] for i in running], [_slots(i, lengths[i] + 1) for i in running],
                                   device="cuda")  # fmt: skip
        graphs, runner.graphs = runner.graphs, None
        eager = runner.forward(batch, pools[0])
        runner.graphs = graphs
        replayed = runner.forward(batch, pools[1])
        torch.testing.assert_close(replayed, eager, rtol=2e-2, atol=2e-2)
        for i, t in zip(running, eager.argmax(-1).tolist()):
            tokens[i], lengths[i] = t, lengths[i] + 1
        if step % 4 == 3:
            running.pop(0)
    assert runner.graphs.replays == 24 - 8  # 8 steps had more rows than the largest bucket


def test_grammar_masks_apply_to_device_logits():
    logits = torch.randn(3, 1000, device="cuda")
    mask = allocate_token_bitmask(3, 1000)
    mask[0].zero_()
    mask[0, 1] = 1 << 3  # row 0 allows token 35 alone
    apply_token_bitmask_(logits, mask)
    assert logits[0].argmax().item() == 35 and torch.isinf(logits[0]).sum().item() == 999
    assert not torch.isinf(logits[1:]).any()
