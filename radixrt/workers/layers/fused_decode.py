"""Decode steps as one C++ op over every decoder layer (`decode_layers`, csrc/decode_layer.cpp).

A batch-1 decode step of a 30-layer model makes ~330 kernel calls; from Python each costs its
module call, the dispatcher and a few views on top of the kernel: ~2 ms of a 6-8 ms int8 step on
an AMD EPYC. `decode_layers` runs the layers' kernels one after the other from C++, on the same
inputs, so its output is bit for bit the modules' output; the layers' weights are handed to C++
once, as a `DecodeStack`, so a step does not box them again. The model takes this path for a forward
whose rows all decode on the C++ attention kernels (`shared_prefix_decode` included), where each of
the layers' linears has a kernel `decode_layers` can run and no module has a forward hook; otherwise
the modules run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from radixrt.workers.layers.module_calls import global_forward_hooks

if TYPE_CHECKING:
    from radixrt.workers.layers.attention.base import DecodeKernelArgs

# a linear's kind, as csrc/decode_layer.cpp reads it
INT8, Q4_1, PACKED, ATEN, ONEDNN, TORCH = range(6)

# (kind, n, k, (weights, scale, bias, group_scale)): what a linear module hands decode_layers
FusedLinear = tuple[int, int, int, tuple[torch.Tensor | None, ...]]


class FusedDecodeLayers:
    """The decoder layers' weights for `decode_layers`, gathered once per row count and
    invariance (a CpuLinear's kernel depends on both). Built once the model's structure is final
    (the runner does, as for `pin_children`): a module replaced later is not seen."""

    def __init__(self, layers: nn.ModuleList, ops: Any):
        self.layers = list(layers)
        self.ops = ops
        # NOTE: registering a hook adds it to these dicts (never replaced): one any() over them is
        # ~5 us a step where reading them through every module took ~0.25 ms
        self._hook_dicts = [
            hooks
            for layer in self.layers
            for m in layer.modules()
            for hooks in (m._forward_hooks, m._forward_pre_hooks)
        ]
        self._stacks: dict[tuple[int, bool], Any] = {}  # DecodeStack, or None: the modules run

    def run(
        self,
        num_tokens: int,
        invariant: bool,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_pool: Any,
        attention: DecodeKernelArgs | None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Every layer over `hidden` (the embeddings); returns (last MLP output, residual), or None
        where this forward cannot take the path (`attention`: the backend's `decode_kernel_args()`)."""
        if attention is None or cos.dtype != hidden.dtype or self._hooked():
            return None
        stack = self._stack(num_tokens, invariant)
        if stack is None:
            return None
        a = attention
        return self.ops.decode_layers(
            stack, hidden, cos, sin, kv_pool.k_buffers, kv_pool.v_buffers, a.out_slots, a.kv_indices, a.starts,
            a.lens, a.scale, a.kernel, a.shared_min_requests,
        )  # fmt: skip

    def _hooked(self) -> bool:
        return global_forward_hooks() or any(self._hook_dicts)

    def _stack(self, rows: int, invariant: bool) -> Any:
        key = (rows, invariant)
        if key not in self._stacks:
            self._stacks[key] = self._gather(rows, invariant)
        return self._stacks[key]

    def _gather(self, rows: int, invariant: bool) -> Any:
        """The layers' weights as a `torch.classes.radixrt.DecodeStack`, or None where a linear has
        no kernel decode_layers can run or the layers' shapes differ."""
        norms, posts, eps, tensors, info, heads = [], [], [], [], [], set()
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            specs = [
                _fused_linear(linear, rows, invariant)
                for linear in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
            ]
            if any(spec is None for spec in specs):
                return None
            norm, post = layer.input_layernorm, layer.post_attention_layernorm
            if norm.eps != post.eps:
                return None
            norms.append(norm.weight)
            posts.append(post.weight)
            eps.append(norm.eps)
            tensors += [t for spec in specs for t in spec[3]]
            info += [value for spec in specs for value in spec[:3]]
            heads.add((attn.num_heads, attn.num_kv_heads))
        if len(heads) != 1:
            return None
        return torch.classes.radixrt.DecodeStack(norms, posts, eps, tensors, info, *heads.pop())


def _fused_linear(linear: nn.Module, rows: int, invariant: bool) -> FusedLinear | None:
    if type(linear) is nn.Linear:  # e.g. a GGUF tensor of a type served widened
        return TORCH, linear.out_features, linear.in_features, (linear.weight, None, linear.bias, None)
    spec = getattr(linear, "fused_linear", None)
    return None if spec is None else spec(rows, invariant)
