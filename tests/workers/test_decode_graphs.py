"""Decode graphs (workers/decode_graphs.py) on the CPU: the buckets, the padding rows and the
static buffers, with `EagerGraph` standing in for a CUDA graph (it records the step at capture and
reruns it over the same buffers at replay). A CUDA graph's replay against eager decode is in the
gpu tests (tests/workers/test_flashinfer_backend.py)."""

from __future__ import annotations

import pytest
import torch

from radixrt.radix_cache.pool import KVPool
from radixrt.workers.decode_graphs import PADDING_SLOT, EagerGraph, batch_buckets, bucket_for
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.model_runner import ModelRunner

PROMPTS = [7, 30, 3, 52, 11]  # prompt lengths; request i's slots start at 100 * (i + 1)
MAX_BATCH = 4


@pytest.fixture(scope="module")
def runner(tiny_model_dir):
    return ModelRunner(tiny_model_dir, dtype="float32", device="cpu", attention_backend="torch")


def test_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(3) == [1, 2, 3]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    buckets = batch_buckets(20)
    assert [bucket_for(b, buckets) for b in (1, 3, 5, 9, 17, 20, 21)] == [1, 4, 8, 16, 20, 20, None]
    with pytest.raises(ValueError, match=">= 1"):
        batch_buckets(0)


def slots_of(i: int, length: int) -> list[int]:
    return list(range(100 * (i + 1), 100 * (i + 1) + length))


def prefilled_pool(runner) -> KVPool:
    pool = KVPool(1024, *runner.kv_shape(), dtype=runner.dtype)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 20_000, (n,), generator=gen).tolist() for n in PROMPTS]
    runner.forward(ForwardBatch.build(prompts, [slots_of(i, n) for i, n in enumerate(PROMPTS)]), pool)
    return pool


def decode_batch(requests: list[int], tokens: list[int], lengths: list[int]) -> ForwardBatch:
    """One decode row per request in `requests`: its next token at position lengths[i]."""
    return ForwardBatch.build([[t] for t in tokens], [slots_of(i, lengths[i] + 1) for i in requests])


def assert_same_cache(a: KVPool, b: KVPool) -> None:
    for layer in range(a.num_layers):
        for x, y in ((a.k_buffers[layer], b.k_buffers[layer]), (a.v_buffers[layer], b.v_buffers[layer])):
            torch.testing.assert_close(x[PADDING_SLOT + 1 :], y[PADDING_SLOT + 1 :], rtol=1e-5, atol=1e-6)


def test_greedy_decode_through_graphs_matches_eager(runner):
    """Five requests decode greedily, leaving one by one, so the batch shrinks from 5 (beyond the
    largest bucket: eager) to 1 across padded buckets; every step's logits, the tokens and every
    K/V row but the padding slot's equal eager decoding's."""
    eager_pool, graph_pool = prefilled_pool(runner), prefilled_pool(runner)
    runner.capture_decode_graphs(graph_pool, MAX_BATCH, max_kv_tokens=512, new_graph=EagerGraph)
    try:
        assert runner.graphs.buckets == [1, 2, 4]
        lengths = list(PROMPTS)
        tokens = [1000 + 7 * i for i in range(len(PROMPTS))]
        running = list(range(len(PROMPTS)))
        replays = 0
        for step in range(15):
            batch = decode_batch(running, [tokens[i] for i in running], lengths)
            expected = runner.forward(batch, eager_pool)
            got = runner.forward(batch, graph_pool)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            assert got.shape == (len(running), runner.model_config.vocab_size)
            replays += len(running) <= MAX_BATCH
            assert runner.graphs.replays == replays
            for i, t in zip(running, got.argmax(-1).tolist()):
                tokens[i] = t
                lengths[i] += 1
            if step % 3 == 2:
                running.pop(0)
        assert replays == 12  # 3 steps of 5 rows (eager), then 3 each of 4, 3, 2 and 1 (buckets 4, 4, 2, 1)
        assert_same_cache(eager_pool, graph_pool)
    finally:
        runner.graphs = None


def test_padding_rows_write_only_the_padding_slot(runner):
    pool = prefilled_pool(runner)
    runner.capture_decode_graphs(pool, MAX_BATCH, max_kv_tokens=512, new_graph=EagerGraph)
    try:
        before = [buf.clone() for buf in pool.k_buffers + pool.v_buffers]
        batch = decode_batch([2], [1234], list(PROMPTS))  # 1 row: bucket 1, no padding
        runner.forward(batch, pool)
        batch = decode_batch([0, 1, 3], [5, 6, 7], [n + 1 for n in PROMPTS])  # 3 rows in bucket 4
        runner.forward(batch, pool)
        assert runner.graphs.replays == 2
        written = {slots_of(2, PROMPTS[2] + 1)[-1]} | {slots_of(i, PROMPTS[i] + 2)[-1] for i in (0, 1, 3)}
        for old, new in zip(before, pool.k_buffers + pool.v_buffers):
            changed = set((old != new).any(dim=(1, 2)).nonzero().flatten().tolist())
            assert changed - {PADDING_SLOT} == written
    finally:
        runner.graphs = None


def test_batches_that_do_not_fit_run_eagerly(runner):
    pool = prefilled_pool(runner)
    runner.capture_decode_graphs(pool, MAX_BATCH, max_kv_tokens=64, new_graph=EagerGraph)
    graphs = runner.graphs
    try:
        lengths = list(PROMPTS)
        assert graphs.fits(decode_batch([0, 2], [5, 6], lengths))
        prefill = ForwardBatch.build([[5, 6, 7]], [slots_of(4, 3)])
        drafts = ForwardBatch.build([[5, 6]], [slots_of(0, lengths[0] + 2)], logit_rows=[[0, 1]], prefill=[False])
        too_many_rows = decode_batch([0, 1, 2, 3, 4], [1] * 5, lengths)
        too_many_keys = decode_batch([1, 3], [5, 6], lengths)  # 31 + 53 keys > 64
        one_logit_of_two = ForwardBatch.build([[5], [6]], [slots_of(0, 8), slots_of(2, 4)], logit_rows=[[0], []])
        for batch in (prefill, drafts, too_many_rows, too_many_keys, one_logit_of_two):
            assert not graphs.fits(batch)
            runner.forward(batch, pool)
        assert graphs.replays == 0
        other_pool = prefilled_pool(runner)  # a graph writes only into the pool it was captured with
        runner.forward(decode_batch([0, 2], [5, 6], lengths), other_pool)
        assert graphs.replays == 0
    finally:
        runner.graphs = None


def test_graphs_only_where_they_can_run(runner):
    assert runner.graphs_supported() == "not a CUDA device"


def test_cuda_without_flashinfer_is_a_clear_error(monkeypatch):
    import importlib.util

    from radixrt.workers.layers.attention import create_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flashinfer" else real(name, *a))
    with pytest.raises(ValueError, match=r"CUDA needs flashinfer: pip install 'radixrt\[gpu\]'"):
        create_backend("auto", "cuda", num_heads=4, num_kv_heads=2, head_dim=16, dtype=torch.bfloat16)


def test_graph_flags_are_checked_and_reach_the_cli():
    import argparse

    from radixrt.runtime.config import ServerArgs

    with pytest.raises(ValueError, match="cuda_graph_max_bs must be >= 1"):
        ServerArgs(cuda_graph_max_bs=0)
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    args = ServerArgs.from_cli(parser.parse_args(["--cuda-graph-max-bs", "16", "--disable-cuda-graph"]), environ={})
    assert (args.cuda_graph_max_bs, args.disable_cuda_graph) == (16, True)
    assert (ServerArgs().cuda_graph_max_bs, ServerArgs().disable_cuda_graph) == (64, False)


def test_the_backend_makes_buffers_for_each_bucket_before_its_capture(runner, monkeypatch):
    """flashinfer plans graph batches into buffers made here: one call per bucket, sized for the
    largest index run a replay copies (the real rows' slots and one per padding row)."""
    calls = []
    monkeypatch.setattr(runner.backend, "graph_buffers", lambda size, kv_tokens: calls.append((size, kv_tokens)))
    pool = prefilled_pool(runner)
    runner.capture_decode_graphs(pool, MAX_BATCH, max_kv_tokens=512, new_graph=EagerGraph)
    runner.graphs = None
    assert calls == [(4, 512 + 4), (2, 512 + 4), (1, 512 + 4)]


def test_flashinfer_plans_into_a_graphs_buffers_only_what_fits_them():
    """An eager decode batch of a bucket's size whose indices outgrow the graph's buffer plans into
    the plain wrapper (the graph's plan would refuse it)."""
    from radixrt.workers.layers.attention.flashinfer_backend import FlashInferAttentionBackend

    backend = FlashInferAttentionBackend.__new__(FlashInferAttentionBackend)  # no CUDA here: its choice alone
    backend._decode, backend._graph_decode = "plain", {4: "graph of 4"}
    backend._graph_indices = torch.zeros(100, dtype=torch.int32)
    assert backend._decode_wrapper(4, 100) == "graph of 4"
    assert backend._decode_wrapper(4, 101) == "plain"
    assert backend._decode_wrapper(3, 10) == "plain"
