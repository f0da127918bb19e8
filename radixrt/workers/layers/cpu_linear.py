"""CPU linears that run whichever implementation measured fastest on this machine for each M.

At load, every distinct linear shape of the model is measured (layers/kernel_tuning.py) and
each linear gets a `LinearChoice`: the fastest candidate per row count, and the fastest of those
whose rows are bit-identical whatever the batch ("invariant"). A forward whose batch asks for
invariance (greedy requests: a cache hit or a batch must never change their output) runs the
invariant one for every M; other forwards run the fastest for their M. When invariance costs
10% or less at a 64-row batch over the whole model, it is used for every forward.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from radixrt.workers.layers import fused_decode, kernel_tuning, linear_candidates
from radixrt.workers.layers.module_calls import DirectCall

logger = logging.getLogger(__name__)

MAX_INVARIANCE_COST = 1.10  # at REFERENCE_ROWS, over the model's linears
REFERENCE_ROWS = 64


@dataclass(frozen=True)
class LinearChoice:
    fast: dict[int, str]  # measured row count -> candidate
    invariant: str | None  # one candidate for every M whose rows never depend on the batch
    # NOTE: row count -> candidate, filled on use: the nearest-measured search cost ~4 us a call,
    # 0.5 ms of a 13 ms batch-1 decode step (121 linears)
    by_rows: dict[int, str] = field(default_factory=dict, compare=False, repr=False)

    def for_rows(self, rows: int, invariant: bool) -> str:
        if invariant and self.invariant is not None:
            return self.invariant
        name = self.by_rows.get(rows)
        if name is None:
            name = self.by_rows[rows] = self.fast[nearest_measured(rows, tuple(self.fast))]
        return name


def nearest_measured(rows: int, measured: tuple[int, ...]) -> int:
    """The measured row count closest to `rows` on a log scale."""
    return min(measured, key=lambda m: (abs(math.log(max(rows, 1) / m)), -m))  # ties: the larger


def choose(m: kernel_tuning.Measurement) -> LinearChoice:
    rows = sorted({r for times in m.seconds.values() for r in times})
    fast = {r: min((c for c in m.seconds if r in m.seconds[c]), key=lambda c: m.seconds[c][r]) for r in rows}
    best = {r: m.seconds[fast[r]][r] for r in rows}
    complete = [c for c in m.seconds if m.invariant[c] and all(r in m.seconds[c] for r in rows)]
    slowdown = lambda c: sum(m.seconds[c][r] / best[r] for r in rows)  # noqa: E731
    return LinearChoice(fast, min(complete, key=slowdown) if complete else None)


@dataclass
class InvarianceSwitch:
    """Shared by all of a model's CpuLinears; the model runner sets `on` before each forward."""

    on: bool = False


class CpuLinear(DirectCall, nn.Module):
    """y = x @ W.T + b through the chosen candidates, each holding the weight in its own layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, choice: LinearChoice, switch: InvarianceSwitch):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.choice, self.switch = choice, switch
        used = set(choice.fast.values()) | ({choice.invariant} - {None})
        self.states = {c: linear_candidates.PREPARE[c](weight.detach()) for c in sorted(used)}
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = self.choice.for_rows(x.shape[0], self.switch.on)
        return linear_candidates.RUN[name](x, self.states[name], self.bias)

    def fused_linear(self, rows: int, invariant: bool) -> fused_decode.FusedLinear:
        """What `forward` would run for `rows` rows, as decode_layers' argument."""
        name = self.choice.for_rows(rows, invariant)
        state = self.states[name]
        weights = state[0] if name == "radixrt" else state
        n, k = self.out_features, self.in_features
        return _FUSED_KINDS[name], n, k, (weights, None, self.bias, None)


_FUSED_KINDS = {"aten": fused_decode.ATEN, "onednn": fused_decode.ONEDNN, "radixrt": fused_decode.PACKED}


@dataclass
class LinearPlan:
    """What the model's linears run: choices per shape, the switch, and the cost of invariance."""

    choices: dict[str, LinearChoice] = field(default_factory=dict)
    switch: InvarianceSwitch = field(default_factory=InvarianceSwitch)
    invariance_cost: float | None = None  # time with the invariant choice / the fastest, at 64 rows
    always_invariant: bool = False

    def summary(self) -> str:
        """One line for logs and /stats: what each shape runs at each measured row count."""
        if not self.choices:
            return "torch"
        by_choice: dict[str, list[str]] = {}
        for key, c in self.choices.items():
            runs = sorted(set(c.fast.values()))
            what = runs[0] if len(runs) == 1 else " ".join(f"M{r}:{n}" for r, n in c.fast.items())
            by_choice.setdefault(what, []).append(key.split(":")[0])
        parts = [f"{what} ({', '.join(shapes)})" for what, shapes in by_choice.items()]
        inv = "/".join(sorted({c.invariant or "none" for c in self.choices.values()}))
        when = "every batch" if self.always_invariant else "batches with greedy requests"
        cost = (
            "" if self.invariance_cost is None else f", {100 * (self.invariance_cost - 1):+.0f}% at M{REFERENCE_ROWS}"
        )
        return f"{'; '.join(parts)}; batch-invariant: {inv} for {when}{cost}"


def plan_linears(
    shapes: dict[str, list[kernel_tuning.Instance]], dtype: torch.dtype, one_layout: bool = False
) -> LinearPlan:
    """Measure (or recall) each shape's candidates; `shapes[key]` lists the model's (weight, bias) of that shape.
    `one_layout`: where memory holds one copy of the weights only, every M runs one candidate."""
    candidates = linear_candidates.available(dtype)
    plan = LinearPlan()
    measured = {}
    for i, (key, instances) in enumerate(shapes.items()):
        logger.debug("timing linear kernels for %s (%d/%d)", key, i + 1, len(shapes))
        measured[key] = kernel_tuning.cached_measure(instances, candidates)
        plan.choices[key] = choose(measured[key])
    plan.invariance_cost = _invariance_cost(plan.choices, measured, {k: len(v) for k, v in shapes.items()})
    cheap = plan.invariance_cost is not None and plan.invariance_cost <= MAX_INVARIANCE_COST
    if cheap or (one_layout and plan.invariance_cost is not None):
        plan.always_invariant = True
        plan.choices = {
            k: LinearChoice(dict.fromkeys(c.fast, c.invariant), c.invariant) for k, c in plan.choices.items()
        }
    elif one_layout:
        plan.choices = {
            k: LinearChoice(dict.fromkeys(c.fast, c.fast[max(c.fast)]), None) for k, c in plan.choices.items()
        }
    return plan


def _invariance_cost(choices: dict[str, LinearChoice], measured: dict, counts: dict[str, int]) -> float | None:
    if not choices or any(c.invariant is None for c in choices.values()):
        return None
    fast = inv = 0.0
    for key, c in choices.items():
        seconds = measured[key].seconds
        fast += counts[key] * seconds[c.fast[REFERENCE_ROWS]][REFERENCE_ROWS]
        inv += counts[key] * seconds[c.invariant][REFERENCE_ROWS]
    return inv / fast


def install(model: nn.Module, dtype: torch.dtype, one_layout: bool = False) -> LinearPlan:
    """Replace every nn.Linear under `model` by a CpuLinear (the weights of measured shapes)."""
    linears = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    shapes: dict[str, list[kernel_tuning.Instance]] = {}
    for _parent, _name, lin in linears:
        key = kernel_tuning.shape_key(*lin.weight.shape, lin.weight.dtype, lin.bias is not None)
        shapes.setdefault(key, []).append((lin.weight, lin.bias))
    plan = plan_linears(shapes, dtype, one_layout)
    for parent, name, lin in linears:
        key = kernel_tuning.shape_key(*lin.weight.shape, lin.weight.dtype, lin.bias is not None)
        setattr(parent, name, CpuLinear(lin.weight, lin.bias, plan.choices[key], plan.switch))
    logger.info("linear kernels, measured on this CPU: %s", plan.summary())
    return plan
