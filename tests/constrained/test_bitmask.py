"""Batched bitmask application against a per-token reference."""

from __future__ import annotations

import torch

from radixrt.constrained import allocate_token_bitmask, apply_token_bitmask_


def test_allocated_bitmask_allows_everything():
    bitmask = allocate_token_bitmask(3, 100)
    assert bitmask.shape == (3, 4) and bitmask.dtype == torch.int32 and bool((bitmask == -1).all())


def test_apply_masks_exactly_the_cleared_bits():
    generator = torch.Generator().manual_seed(0)
    batch, vocab = 4, 77  # not a multiple of 32
    bitmask = torch.randint(-(2**31), 2**31 - 1, (batch, 3), dtype=torch.int32, generator=generator)
    bitmask[2] = -1  # an unconstrained row
    logits = torch.randn(batch, vocab, generator=generator)
    expected = logits.clone()
    for row in range(batch):
        for token in range(vocab):
            if not (int(bitmask[row, token // 32]) >> (token % 32)) & 1:
                expected[row, token] = float("-inf")
    apply_token_bitmask_(logits, bitmask)
    assert torch.equal(logits, expected)
    assert torch.isfinite(logits[2]).all()
