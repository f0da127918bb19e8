"""`ForwardBatch.from_table` (the slots gathered from the request-to-token table in whole-batch ops,
what a CUDA worker builds) against `ForwardBatch.build` (slot lists request by request)."""

from __future__ import annotations

import random

import pytest
import torch

from radixrt.radix_cache.pool import ReqToToken
from radixrt.workers.forward_batch import ForwardBatch

FIELDS = ("input_ids", "positions", "out_slots", "qo_indptr", "kv_indptr", "kv_indices", "logits_indices")


@pytest.mark.parametrize("seed", range(20))
def test_from_table_equals_build_for_mixed_batches(seed):
    rng = random.Random(seed)
    table = ReqToToken(12, 300)
    table.table.copy_(torch.randint(1, 10_000, table.table.shape, generator=torch.Generator().manual_seed(seed)))
    batch = rng.randint(1, 10)
    rows = rng.sample(range(12), batch)
    new_ids, seq_lens, logit_rows, prefill = [], [], [], []
    for _ in range(batch):
        kind = rng.choice(["decode", "drafts", "prefill", "cached prefill"])
        new = {"decode": 1, "drafts": rng.randint(2, 5)}.get(kind, rng.randint(1, 40))
        prefix = 0 if kind == "prefill" else rng.randint(0, 250)
        new_ids.append([rng.randint(0, 49_000) for _ in range(new)])
        seq_lens.append(prefix + new)
        prefill.append(kind.endswith("prefill"))
        logit_rows.append(sorted(rng.sample(range(new), rng.randint(0, new))))
    expected = ForwardBatch.build(new_ids, [table.read(r, n) for r, n in zip(rows, seq_lens)], logit_rows,
                                  prefill=prefill, invariant=True)  # fmt: skip
    got = ForwardBatch.from_table(new_ids, table.table, rows, seq_lens, logit_rows, prefill=prefill, invariant=True)
    for field in FIELDS:
        a, b = getattr(expected, field), getattr(got, field)
        assert a.dtype == b.dtype and torch.equal(a, b), field
    assert (got.extend_lens, got.seq_lens, got.prefill, got.invariant) == (
        expected.extend_lens, expected.seq_lens, expected.prefill, True)  # fmt: skip


def test_default_logit_rows_are_each_requests_last_token():
    table = ReqToToken(4, 64)
    table.table.copy_(torch.arange(256).view(4, 64))
    got = ForwardBatch.from_table([[7, 8, 9], [5]], table.table, [2, 0], [10, 4])
    assert got.logits_indices.tolist() == [2, 3]
    assert got.out_slots.tolist() == [135, 136, 137, 3] and got.positions.tolist() == [7, 8, 9, 3]
    assert got.kv_indices.tolist() == list(range(128, 138)) + [0, 1, 2, 3]


def test_the_schedulers_cuda_batches_give_the_same_outputs(tiny_model_dir):
    """The scheduler builds batches with `from_table` where the runner is on CUDA, and the table
    defers its writes there: here the runner claims CUDA (its tensors stay on the CPU), and greedy
    outputs, with drafts and a prompt served from the cache, equal those of batches built with `build`."""
    from tests.runtime.sched_harness import Harness

    outputs = []
    for claims_cuda in (False, True):
        h = Harness(tiny_model_dir, speculative="ngram")
        if claims_cuda:  # as on a GPU: batches from the table, whose writes wait for the next read
            h.sched.runner.device = torch.device("cuda")
            h.sched.cache.table._deferred = True
        shared = list(range(100, 160))
        rids = [
            h.request(shared + [7, 8, 9] * 6, max_new_tokens=24),
            h.request(list(range(300, 345)), max_new_tokens=16),
        ]
        h.run()
        rids.append(h.request(shared + [5], max_new_tokens=12))  # most of it cached by now
        h.run()
        outputs.append([h.outputs[r] for r in rids])
        h.sched.runner.device = torch.device("cpu")
    assert outputs[0] == outputs[1] and all(len(o) > 0 for o in outputs[0])
