"""bf16 linears on CPU through oneDNN with the weights reordered once, at load time.

`F.linear` hands oneDNN a plain row-major weight, which it repacks into its blocked layout on
every call; for the small M of decode that repacking costs as much as the matmul (measured
on the embedded model's shapes: M=16 1.3x, M=64 1.3x, M=1024 1.2x faster forwards). Packed
results equal oneDNN's unpacked ones.

Packed results are batch-invariant from two rows up: a row gets the same bits alone (computed
as two rows) or inside any batch, so prefilling a prompt in one go or in cached pieces gives the
same logits. One-token decode steps are the exception: there ATen's own vectorised kernel (oneDNN
switched off by the model runner) streams the plain weights faster than oneDNN does (15.6 vs
23.2 ms per token on the embedded model), so a PackedLinear may keep its plain weight for them,
at the cost of holding the weights twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    return (device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))  # fmt: skip


class PackedLinear(nn.Module):
    """y = x @ W.T + b with W in oneDNN's layout (an opaque tensor: not a parameter, no state_dict);
    with `keep_plain`, rows of one token use the plain W through `F.linear`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, keep_plain: bool = False):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        self.plain = weight.detach() if keep_plain else None
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            if self.plain is not None and not torch._C._get_mkldnn_enabled():
                return F.linear(x, self.plain, self.bias)  # ATen's GEMV: the one-token decode path
            # NOTE: oneDNN's one-row kernel splits the reduction differently from its multi-row
            # ones; as two rows, a row gets exactly what it gets inside any larger batch
            return self._packed(x.repeat(2, 1))[:1]
        return self._packed(x)

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def pack_linears(module: nn.Module, keep_plain: bool = False) -> None:
    """Replace every nn.Linear under `module` by a PackedLinear, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, PackedLinear(child.weight, child.bias, keep_plain))
        else:
            pack_linears(child, keep_plain)
