import torch
from torch import nn

from radixrt.workers.layers.module_calls import DirectCall, pin_children


class Scale(DirectCall, nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class Pair(DirectCall, nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = Scale(2.0), Scale(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def test_direct_call_runs_forward_without_module_call_machinery():
    module = Pair()
    calls = []
    module.register_forward_hook(lambda *args: calls.append(args))
    assert torch.equal(module(torch.ones(2)), torch.full((2,), 6.0))
    assert calls == []  # nn.Module.__call__ never ran


def test_pinned_children_are_read_from_the_instance_dict():
    module = Pair()
    pin_children(module)
    assert module.__dict__["first"] is module._modules["first"]
    assert [name for name, _ in module.named_children()] == ["first", "second"]  # still registered
    assert torch.equal(module(torch.ones(1)), torch.full((1,), 6.0))


def test_replacing_a_pinned_child_drops_the_stale_copy():
    module = Pair()
    pin_children(module)
    module.first = Scale(5.0)  # as kernel installation replaces linears
    assert module.first is module._modules["first"]
    assert torch.equal(module(torch.ones(1)), torch.full((1,), 15.0))
