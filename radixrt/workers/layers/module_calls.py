"""Cheaper module calls for the layers a forward runs many times.

A batch-1 decode step of a 30-layer model makes ~214 module calls and ~370 reads of child modules.
Through nn.Module's `__call__` (hook and tracing checks) and `__getattr__` (children live in
`_modules`, found only after the instance dict misses) they cost 0.2-0.6 ms each of a 7.5-9 ms
step on an AMD EPYC (measured with alternating steps in one process), the same at any weight size:
a larger share the faster the linears (int8) and the smaller the model.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules import module as torch_module


class DirectCall:
    """Mixin placed before nn.Module: `module(x)` runs `forward` directly while no forward hook is
    registered on it or globally; with one (a user capturing activations, a profiler), the call
    goes through nn.Module's `__call__` and the hooks run as usual."""

    def __call__(self, *args, **kwargs):
        if self._forward_hooks or self._forward_pre_hooks or global_forward_hooks():
            return nn.Module.__call__(self, *args, **kwargs)
        return self.forward(*args, **kwargs)


def global_forward_hooks() -> bool:
    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)


def pin_children(model: nn.Module) -> None:
    """Copy every module's children into its instance dict, so reading `self.child` skips
    nn.Module.__getattr__. nn.Module.__setattr__ drops a copy when its child is replaced; call this
    after the model's last `del` of a child (fusing, quantizing, installing kernels)."""
    for module in model.modules():
        module.__dict__.update(module._modules)
