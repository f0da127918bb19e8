"""Per-row control of one transformers `generate` batch: when each row stops, and grammar masks.

transformers decodes a static batch; rows finish at different times. `RowControl` is the batch's
StoppingCriteria: it advances each row's grammar matcher by the sampled token and marks the row
done on EOS / stop id, a stop string, a finished grammar, or the row's own max_new_tokens.
`GrammarMask` is the LogitsProcessor that masks each constrained row with its matcher's bitmask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from radixrt.constrained import (
    GrammarMatcher,
    allocate_token_bitmask,
    apply_token_bitmask_,
)
from radixrt.runtime.protocol import SamplingParams


@dataclass
class RowSpec:
    sampling: SamplingParams
    matcher: GrammarMatcher | None = None


class RowControl(StoppingCriteria):
    """Stopping criteria for rows `specs` of a batch whose prompts are padded to `prompt_len`."""

    def __init__(self, specs: list[RowSpec], prompt_len: int, eos_ids: set[int], decode: Callable[[list[int]], str]):
        self.specs, self.prompt_len, self.eos_ids, self.decode = specs, prompt_len, eos_ids, decode
        self.done = torch.zeros(len(specs), dtype=torch.bool)  # [B]
        self.lengths = [0] * len(specs)  # generated tokens kept per row
        self.reasons: list[dict[str, Any]] = [{"type": "length"} for _ in specs]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        generated = input_ids[:, self.prompt_len :]  # [B, n]
        n = generated.shape[1]
        for row, spec in enumerate(self.specs):
            if not self.done[row]:
                reason = self._step(spec, generated[row].tolist(), n)
                if reason is not None:
                    self.done[row], self.lengths[row], self.reasons[row] = True, n, reason
        return self.done.to(input_ids.device, copy=True)

    def _step(self, spec: RowSpec, ids: list[int], n: int) -> dict[str, Any] | None:
        """Why the row stops after its n-th token, or None to go on."""
        token, sampling = ids[-1], spec.sampling
        if spec.matcher is not None:
            spec.matcher.accept_token(token)
        if (token in self.eos_ids and not sampling.ignore_eos) or token in sampling.stop_token_ids:
            return {"type": "stop", "matched": token}
        if sampling.stop:
            text = self.decode(ids)
            matched = next((s for s in sampling.stop if s in text), None)
            if matched is not None:
                return {"type": "stop", "matched": matched}
        if spec.matcher is not None and spec.matcher.is_terminated():
            return {"type": "stop", "matched": None}
        if n >= sampling.max_new_tokens:
            return {"type": "length", "length": n}
        return None

    def kept(self, row: int, generated: int) -> int:
        """Tokens to keep of row `row` when the batch generated `generated` (rows never stopped keep all)."""
        return self.lengths[row] if self.done[row] else generated


class GrammarMask(LogitsProcessor):
    """Masks the logits of constrained rows that are still running; other rows stay untouched."""

    def __init__(self, control: RowControl, vocab_size: int):
        self.control = control
        self.bitmask = allocate_token_bitmask(len(control.specs), vocab_size)  # [B, ceil(V/32)]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.bitmask.fill_(-1)
        for row, spec in enumerate(self.control.specs):
            if spec.matcher is not None and not self.control.done[row]:
                spec.matcher.fill_bitmask(self.bitmask, row)
        apply_token_bitmask_(scores, self.bitmask)
        return scores
