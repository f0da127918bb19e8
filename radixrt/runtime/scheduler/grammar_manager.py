"""Grammars inside the worker: background compiles, per-request matchers, batch masks, jump-forward."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from radixrt import envs
from radixrt.errors import InternalError, InvalidRequest
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.scheduler.cache_manager import CacheManager
from radixrt.runtime.scheduler.req import Req

log = logging.getLogger("radixrt.grammar")


def grammar_cache_dir() -> Path:
    return envs.cache_root() / "grammars"


class GrammarManager:
    """`new_compiler` builds the grammar compiler on the first constrained request (default: a
    GrammarCompiler over the model's vocabulary)."""

    def __init__(
        self,
        model_dir: str,
        tokenizer: Any,
        eos_ids: list[int],
        vocab_size: int,
        args: ServerArgs,
        new_compiler: Callable[[], Any] | None = None,
    ):
        self.model_dir = model_dir
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.vocab_size = vocab_size
        self.time_limit = args.grammar_time_limit
        self._new_compiler = new_compiler or self._new_grammar_compiler
        self._compiler: Any = None
        self.jump_forward_tokens = 0

    @property
    def compiler(self) -> Any:
        """The compiler, built on first use (most workloads never constrain); InternalError when it
        cannot start. A later constrained request tries again."""
        if self._compiler is None:
            try:
                self._compiler = self._new_compiler()
            except Exception as exc:  # noqa: BLE001 - whatever stops it, the server is at fault, not the request
                log.exception("the grammar compiler could not start")
                raise InternalError(f"the grammar compiler could not start: {exc}") from exc
        return self._compiler

    def _new_grammar_compiler(self) -> Any:
        from radixrt.constrained import GrammarCompiler

        return GrammarCompiler(
            self.model_dir,
            eos_token_ids=self.eos_ids,
            vocab_size=self.vocab_size,
            cache_dir=grammar_cache_dir(),
            time_limit_s=self.time_limit,
        )

    def submit(self, req: Req) -> None:
        """Start compiling `req`'s grammar; InternalError when the compiler cannot start."""
        kind, source = req.sampling.grammar_key
        req.grammar_future = self.compiler.submit(kind, source)

    def poll(self, waiting: list[Req], fail: Callable[..., None]) -> None:
        """Give finished compiles their matcher; fail requests whose grammar did not compile."""
        for req in list(waiting):
            fut = req.grammar_future
            if fut is None or not fut.done():
                continue
            req.grammar_future = None
            try:
                req.matcher = fut.result().new_matcher(stop_token_ids=req.sampling.stop_token_ids)
                self._replay(req)
            except InvalidRequest as exc:
                fail(req, 400, str(exc), exc.param)
            except Exception as exc:  # noqa: BLE001 - any compile failure is this request's alone
                log.exception("grammar compile failed for %s", req.rid)
                fail(req, 400, f"grammar could not be compiled: {exc}", req.sampling.grammar_key[0])

    @staticmethod
    def _replay(req: Req) -> None:
        for tok in req.output_ids:  # a retracted request re-enters with its output so far
            req.matcher.accept_token(tok)

    def apply_masks(self, rows: list[tuple[Req, int]], logits: torch.Tensor) -> None:
        """Mask the rows of constrained requests in one op (unconstrained rows stay all-ones).

        Row i = (req, j) scores the token after req's output and its first j draft tokens; a
        request's rows come in order j = 0 .. len(req.draft), and its matcher ends as it began.
        """
        if not any(r.matcher is not None for r, _ in rows):
            return
        from radixrt.constrained import allocate_token_bitmask, apply_token_bitmask_

        mask = allocate_token_bitmask(len(rows), logits.shape[-1])
        for i, (req, j) in enumerate(rows):
            if req.matcher is None:
                continue
            if j:
                accepted = req.matcher.accept_token(req.draft[j - 1])
                assert accepted, "drafts were cut where the grammar rejects a token"
            req.matcher.fill_bitmask(mask, i)
            if j and j == len(req.draft):
                req.matcher.rollback(j)
        apply_token_bitmask_(logits, mask.to(logits.device))

    def jump_forward(self, req: Req, cache: CacheManager) -> None:
        """Append the text the grammar forces, retokenized at the boundary, as pending tokens."""
        if req.logprobs is not None:
            return  # forced tokens have no sampled logprobs
        from radixrt.constrained import jump_forward_tokens

        result = jump_forward_tokens(req.matcher, self.tokenizer, req.output_ids)
        if result is None:
            return
        drop, new_ids = result
        unsent = len(req.output_ids) - req.sent
        rollback = max(drop - 1, 0)  # every output but the last sampled one is computed
        room = req.sampling.max_new_tokens - (len(req.output_ids) - drop + len(new_ids))
        if drop > unsent or not cache.can_uncompute(req, rollback) or room <= 0:
            # cannot rewrite what was streamed or is shared: put the matcher back as it was
            req.matcher.rollback(len(new_ids))
            req.matcher.accept_tokens(req.output_ids[len(req.output_ids) - drop :])
            return
        cache.uncompute(req, rollback)
        if drop:
            del req.output_ids[-drop:]
        req.output_ids.extend(new_ids)
        req.jump_forward_tokens += len(new_ids)
        self.jump_forward_tokens += len(new_ids)
        if req.matcher.is_terminated():
            req.finish_reason = {"type": "stop", "matched": new_ids[-1]}

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"jump_forward_tokens": self.jump_forward_tokens}
        if self._compiler is not None:
            out["grammar"] = self.compiler.stats()
        return out
