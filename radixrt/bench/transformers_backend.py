"""`TransformersBackend`: the DSL's Backend on transformers' `generate`, the no-reuse baseline.

Same weights, tokenizer and chat template as the radixrt server, so the same programs send the
same prompts. Concurrent calls (run_batch threads, forks) are batched by `HFBatcher` with left
padding up to the same batch limit as the server; every call recomputes its whole prompt. `select`
scores each continuation's logprobs in one forward; regex / JSON constraints mask the logits with
radixrt's own grammar matcher. A fork's prefill-only commit does nothing here (there is no cache
to fill), so it costs nothing.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from radixrt.bench.hf_batcher import GenJob, HFBatcher, ScoreJob
from radixrt.bench.hf_control import RowSpec
from radixrt.errors import InvalidRequest
from radixrt.lang.backends.base import Backend
from radixrt.lang.chat_template import ChatTemplate
from radixrt.lang.sampling import NO_LOGPROBS, LogprobOptions
from radixrt.runtime.protocol import (
    ContinuationScore,
    GenerateResult,
    SamplingParams,
    ScoreResult,
)
from radixrt.runtime.server.detokenizer import trim_at_stop
from radixrt.runtime.server.tokenizer_manager import load_tokenizer
from radixrt.token_ids import common_prefix_len


class TransformersBackend(Backend):
    """`model_dir`: an HF folder (config.json, safetensors, tokenizer.json). Thread-safe."""

    def __init__(self, model_dir: str | Path, *, dtype: torch.dtype = torch.bfloat16, max_batch: int = 64,
                 max_batch_tokens: int = 32768, grammar_cache_dir: Path | None = None, device: str = "cpu"):  # fmt: skip
        from transformers import AutoModelForCausalLM

        self.model_dir = str(model_dir)
        self.tokenizer = load_tokenizer(model_dir)
        self.eos_ids = _eos_ids(self.tokenizer, self.model_dir)
        self._template = ChatTemplate.from_jinja(self.tokenizer.chat_template, self.tokenizer.eos_token)
        self._grammar_cache_dir = grammar_cache_dir
        self._compiler: Any = None
        self._compiler_lock = threading.Lock()
        self._rids = itertools.count()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.batcher = HFBatcher(lambda: AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(device).eval(), pad_id=pad, eos_ids=self.eos_ids, decode=self._decode,
                                 max_batch=max_batch, max_batch_tokens=max_batch_tokens)  # fmt: skip

    def chat_template(self) -> ChatTemplate:
        return self._template

    def generate(
        self,
        prompt: str,
        sampling: SamplingParams,
        logprobs: LogprobOptions = NO_LOGPROBS,
        on_chunk: Callable[[str], None] | None = None,
    ) -> GenerateResult:
        sampling.verify()
        if logprobs.return_logprob or sampling.n != 1:
            raise InvalidRequest("the transformers baseline supports no logprobs or n > 1", "sampling")
        ids = self._encode(prompt)
        meta: dict[str, Any] = {"prompt_tokens": len(ids), "cached_tokens": 0, "completion_tokens": 0}
        rid = f"hf-{next(self._rids)}"
        if sampling.max_new_tokens == 0:  # a commit: nothing to cache without a prefix cache
            return GenerateResult(rid=rid, text="", output_ids=[], meta_info={**meta, "finish_reason": None})
        job = GenJob(ids, RowSpec(sampling, self._matcher(sampling)))
        out_ids, reason = self.batcher.submit(job).result()
        text = self._decode(out_ids)
        if sampling.stop and not sampling.no_stop_trim:
            text = trim_at_stop(text, sampling.stop)[0]
        if on_chunk is not None:
            on_chunk(text)
        meta.update(completion_tokens=len(out_ids), finish_reason=reason)
        return GenerateResult(rid=rid, text=text, output_ids=out_ids, meta_info=meta)

    def score(self, prefix: str, continuations: list[str]) -> ScoreResult:
        prefix_ids = self._encode(prefix) if prefix else []
        sequences = []
        for cont in continuations:
            ids = self._encode(prefix + cont)
            sequences.append((ids, min(common_prefix_len(prefix_ids, ids), len(ids) - 1)))
        results = self.batcher.submit(ScoreJob(sequences)).result()
        scores = [
            ContinuationScore(token_ids=ids[max(start, 1) :], logprobs=lps, prompt_tokens=len(ids), cached_tokens=0)
            for (ids, start), lps in zip(sequences, results)
        ]
        return ScoreResult(rid=f"hf-{next(self._rids)}", scores=scores)

    def flush_cache(self) -> None:
        """There is no cache to flush."""

    def get_server_info(self) -> dict[str, Any]:
        b = self.batcher
        return {"cache_hit_tokens": 0, "prompt_tokens": b.computed_tokens, "busy_s": b.busy_s, "radix_cache": False}

    def caches_prefixes(self) -> bool:
        return False

    def shutdown(self) -> None:
        self.batcher.close()
        if self._compiler is not None:
            self._compiler.close()

    # ---- helpers ----------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _matcher(self, sampling: SamplingParams) -> Any:
        """A fresh grammar matcher for a constrained request (compiled once per grammar), else None."""
        if sampling.grammar_key is None:
            return None
        with self._compiler_lock:
            if self._compiler is None:
                from radixrt.constrained import GrammarCompiler

                self._compiler = GrammarCompiler(self.model_dir, eos_token_ids=sorted(self.eos_ids),
                                                 vocab_size=self.batcher.vocab_size,
                                                 cache_dir=self._grammar_cache_dir)  # fmt: skip
        grammar = self._compiler.submit(*sampling.grammar_key).result()
        return grammar.new_matcher(stop_token_ids=sampling.stop_token_ids)


def _eos_ids(tokenizer: Any, model_dir: str) -> set[int]:
    from transformers import AutoConfig, GenerationConfig

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        configured = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:  # no generation_config.json
        configured = AutoConfig.from_pretrained(model_dir).eos_token_id
    ids |= set(configured) if isinstance(configured, list) else {configured} if configured is not None else set()
    return ids
