"""A Backend wrapper that records every request a program sends, in the order they are sent.

The trace feeds the figures: output tokens, per-request prompt/cached tokens, and (after the run)
the token ids of each prompt for the optimal hit rate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from radixrt.lang.backends.base import Backend
from radixrt.lang.chat_template import ChatTemplate
from radixrt.lang.sampling import NO_LOGPROBS, LogprobOptions
from radixrt.runtime.protocol import GenerateResult, SamplingParams, ScoreResult


@dataclass
class Call:
    """One request. kind "gen" (max_new_tokens > 0), "commit" (prefill only) or "score" (one per
    continuation: `prompt` is prefix + continuation, `score_prefix` the prefix)."""

    kind: str
    prompt: str
    score_prefix: str | None = None
    output_ids: list[int] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    done: bool = False


class RecordingBackend(Backend):
    """Forwards to `inner`; appends a Call per request when it is sent, fills it when it returns."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self._calls: list[Call] = []
        self._lock = threading.Lock()

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def chat_template(self) -> ChatTemplate:
        return self.inner.chat_template()

    def generate(
        self,
        prompt: str,
        sampling: SamplingParams,
        logprobs: LogprobOptions = NO_LOGPROBS,
        on_chunk: Callable[[str], None] | None = None,
    ) -> GenerateResult:
        call = self._add(Call("gen" if sampling.max_new_tokens > 0 else "commit", prompt))
        result = self.inner.generate(prompt, sampling, logprobs, on_chunk)
        meta = result.meta_info
        with self._lock:
            call.output_ids = list(result.output_ids)
            call.completion_tokens = int(meta.get("completion_tokens", len(result.output_ids)))
            call.prompt_tokens = int(meta.get("prompt_tokens", 0))
            call.cached_tokens = int(meta.get("cached_tokens", 0))
            call.done = True
        return result

    def score(self, prefix: str, continuations: list[str]) -> ScoreResult:
        calls = [self._add(Call("score", prefix + c, score_prefix=prefix)) for c in continuations]
        result = self.inner.score(prefix, continuations)
        with self._lock:
            for call, scored in zip(calls, result.scores):
                call.prompt_tokens, call.cached_tokens = scored.prompt_tokens, scored.cached_tokens
                call.done = True
        return result

    def flush_cache(self) -> None:
        self.inner.flush_cache()

    def get_server_info(self) -> dict[str, Any]:
        return self.inner.get_server_info()

    def caches_prefixes(self) -> bool:
        return self.inner.caches_prefixes()

    def shutdown(self) -> None:
        """The inner backend belongs to the caller; nothing to release here."""

    def _add(self, call: Call) -> Call:
        with self._lock:
            self._calls.append(call)
        return call
