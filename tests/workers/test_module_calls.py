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


def test_direct_call_runs_forward_without_module_call_machinery(monkeypatch):
    module = Pair()
    called = []
    monkeypatch.setattr(nn.Module, "__call__", lambda *args, **kwargs: called.append(args))
    assert torch.equal(module(torch.ones(2)), torch.full((2,), 6.0))
    assert called == []  # nn.Module.__call__ never ran


def test_forward_hooks_still_run_when_registered():
    module = Pair()
    seen = []
    handle = module.first.register_forward_hook(lambda _mod, _args, out: seen.append(out.clone()))
    pre = module.register_forward_pre_hook(lambda _mod, args: (args[0] * 10,))  # changes the input
    assert torch.equal(module(torch.ones(1)), torch.full((1,), 60.0))
    assert len(seen) == 1 and torch.equal(seen[0], torch.full((1,), 20.0))
    handle.remove()
    pre.remove()
    assert torch.equal(module(torch.ones(1)), torch.full((1,), 6.0)) and len(seen) == 1
    with nn.modules.module.register_module_forward_hook(lambda _mod, _args, out: seen.append(out)):
        module(torch.ones(1))
    assert len(seen) == 1 + 3  # a global hook sees the pair and both children


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
