"""oneDNN-packed bf16 linears compute what F.linear computes, for every batch size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from radixrt.workers.layers.packed_linear import PackedLinear, can_pack, pack_linears

pytestmark = pytest.mark.skipif(not can_pack(torch.device("cpu"), torch.bfloat16), reason="no oneDNN bf16")


@pytest.mark.parametrize("rows", [1, 3, 16, 200])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_f_linear(rows, bias):
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 64, generator=gen).bfloat16()
    b = torch.randn(96, generator=gen).bfloat16() if bias else None
    x = torch.randn(rows, 64, generator=gen).bfloat16()
    expected = F.linear(x.float(), weight.float(), None if b is None else b.float())
    for keep_plain in (False, True):
        got = PackedLinear(weight, b, keep_plain=keep_plain)(x)
        assert got.dtype == torch.bfloat16 and got.shape == (rows, 96)
        torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.02)


def test_one_row_uses_the_plain_weight_only_when_kept():
    weight = torch.randn(32, 16).bfloat16()
    assert PackedLinear(weight).plain is None
    kept = PackedLinear(weight, keep_plain=True)
    assert kept.plain is not None and kept.plain.data_ptr() == weight.data_ptr()  # shared, not copied


def test_pack_linears_replaces_nested_linears_and_keeps_outputs():
    model = nn.Sequential(
        nn.Linear(8, 16, dtype=torch.bfloat16),
        nn.ReLU(),
        nn.Sequential(nn.Linear(16, 4, bias=False, dtype=torch.bfloat16)),
    )
    x = torch.randn(5, 8).bfloat16()
    with torch.inference_mode():
        before = model(x)
        pack_linears(model)
        after = model(x)
    assert isinstance(model[0], PackedLinear) and isinstance(model[2][0], PackedLinear)
    torch.testing.assert_close(after, before)
