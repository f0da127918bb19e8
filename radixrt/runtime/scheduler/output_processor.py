"""After sampling: append tokens, decide who finished, build the TokenOuts to send."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from radixrt.runtime.protocol import TokenOut
from radixrt.runtime.scheduler import speculative
from radixrt.runtime.scheduler.forward_step import StepResult
from radixrt.runtime.scheduler.req import Logprobs, Req

STOP_WINDOW_TOKENS = 8  # extra tokens decoded around a stop string to catch it across tokens


class OutputProcessor:
    """`jump_forward(req)` appends grammar-forced text (None: disabled); `discard(req, n)` frees the
    KV of req's last n computed tokens (verified tokens that are not kept)."""

    def __init__(
        self,
        tokenizer: Any,
        eos_ids: list[int],
        context_length: int,
        jump_forward: Callable[[Req], None] | None = None,
        discard: Callable[[Req, int], None] | None = None,
    ):
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self.context_length = context_length
        self.jump_forward = jump_forward
        self.discard = discard

    def apply(self, result: StepResult) -> None:
        """Append the sampled tokens (if any) and set finish_reason when the request is done.

        Tokens are taken one at a time, as decode steps would take them: after one that finishes the
        request, or after which the grammar forces text (jump-forward writes it, as it would without
        speculation), the rest are dropped and their KV freed.
        """
        req = result.req
        if req.finished:
            return
        if not result.next_ids:
            if req.pending == 0 and req.sampling.max_new_tokens == 0:
                req.finish_reason = {"type": "length", "length": 0}
            return
        last = len(result.next_ids) - 1
        for i, tok in enumerate(result.next_ids):
            self._append(req, result, i)
            req.finish_reason = self._finish_reason(req, tok)
            if i < last and (req.finished or self._forces_text(req)):
                self.discard(req, last - i)
                break
        if req.finish_reason is None and self.jump_forward is not None and req.matcher is not None:
            self.jump_forward(req)

    @staticmethod
    def _append(req: Req, result: StepResult, i: int) -> None:
        req.output_ids.append(result.next_ids[i])
        if req.logprobs is not None:
            req.logprobs.output.append(result.logprobs[i])
            if result.top_logprobs:
                req.logprobs.output_top.append(result.top_logprobs[i])

    def _forces_text(self, req: Req) -> bool:
        return self.jump_forward is not None and req.matcher is not None and req.matcher.jump_forward() is not None

    def _finish_reason(self, req: Req, tok: int) -> dict[str, Any] | None:
        params = req.sampling
        if req.matcher is not None:
            if not req.matcher.accept_token(tok):
                return {"type": "abort", "message": f"token {tok} rejected by the grammar"}
            if req.matcher.is_terminated():
                return {"type": "stop", "matched": tok}
        n_out = len(req.output_ids)
        if n_out >= params.min_new_tokens:
            if tok in params.stop_token_ids:
                return {"type": "stop", "matched": tok}
            if not params.ignore_eos and tok in self.eos_ids and req.matcher is None:
                return {"type": "stop", "matched": tok}
            matched = self._stop_string(req)
            if matched is not None:
                return {"type": "stop", "matched": matched}
        if n_out >= params.max_new_tokens or req.known >= self.context_length:
            return {"type": "length", "length": n_out}
        return None

    def _stop_string(self, req: Req) -> str | None:
        stops = req.sampling.stop
        if not stops:
            return None
        window = max(len(s) for s in stops) + STOP_WINDOW_TOKENS
        tail = self.tokenizer.decode(req.output_ids[-window:], skip_special_tokens=False)
        return next((stop for stop in stops if stop in tail), None)

    @staticmethod
    def token_out(req: Req, final_only: bool = False) -> TokenOut | None:
        """New output since the last send; None when there is nothing to send now."""
        if not req.finished and (final_only or not req.stream):
            return None
        new = req.output_ids[req.sent :]
        if not new and not req.finished:
            return None
        out = TokenOut(
            rid=req.rid,
            new_ids=new,
            finish_reason=req.finish_reason,
            prompt_tokens=req.prompt_len,
            cached_tokens=max(req.cached_tokens, 0),
            completion_tokens=len(req.output_ids),
        )
        if req.logprobs is not None:
            _add_logprobs(out, req, req.logprobs)
        extra = speculative.meta_info(req)
        if req.jump_forward_tokens:
            extra["jump_forward_tokens"] = req.jump_forward_tokens
        if req.pin_report is not None:
            extra["pin"] = req.pin_report
        out.extra = extra or None
        req.sent = len(req.output_ids)
        return out


def _add_logprobs(out: TokenOut, req: Req, scores: Logprobs) -> None:
    """The output scores since the last send, and the prompt scores with the first send."""
    out.output_logprobs = scores.output[req.sent :]
    if scores.top_n:
        out.output_top_logprobs = scores.output_top[req.sent :]
    if scores.wants_prompt and not scores.prompt_sent:
        start = scores.start_len
        out.input_logprobs = scores.prompt
        out.input_ids_scored = req.input_ids[start : start + len(scores.prompt)]
        if scores.top_n:
            out.input_top_logprobs = scores.prompt_top
        scores.prompt_sent = True
