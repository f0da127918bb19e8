"""`LlamaCppBackend`: the DSL's Backend on llama-cpp-python, the peer CPU users run agents on.

Used the way llama-cpp-python serves a model (its `Llama` object, which its OpenAI-compatible
server also wraps behind a lock): one KV sequence, requests one at a time in arrival order, and
its prompt reuse: `Llama.generate` keeps the KV of the longest prefix the new prompt shares with
the tokens of the previous request, and computes only the rest. Several agents in flight queue
for that one sequence, as they would on its server; nothing is batched. The bench therefore runs
programs on it one after another (`Session.one_at_a_time`).

- Tokens: llama.cpp's own tokenizer from the GGUF file (for the embedded model it gives the same
  ids as the HF tokenizer on the workloads' text; tested); the chat template comes from the
  model folder, as for the other systems.
- `select`: each continuation's logprobs from llama.cpp's logits. llama-cpp-python's public
  route (`logits_all=True` + `create_completion(echo=True, logprobs=...)`) would compute and
  copy logits for every prompt token of every request; here only the rows that score a
  continuation ask for logits (`_ScoringSequence`), and the prefix is reused like a prompt.
- `regex`: translated to GBNF (`regex_gbnf.py`); `json_schema`: llama.cpp's own converter
  (`LlamaGrammar.from_json_schema`); `choices`: an alternation of literals. llama.cpp's grammar
  sampler masks every step (no jump-forward).
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from radixrt.bench.llamacpp_sequence import ScoringSequence
from radixrt.bench.regex_gbnf import regex_to_gbnf
from radixrt.errors import InvalidRequest
from radixrt.lang.backends.base import Backend
from radixrt.lang.chat_template import ChatTemplate
from radixrt.lang.sampling import NO_LOGPROBS, LogprobOptions
from radixrt.runtime.protocol import ContinuationScore, GenerateResult, SamplingParams, ScoreResult
from radixrt.runtime.server.detokenizer import trim_at_stop
from radixrt.runtime.server.tokenizer_manager import load_tokenizer
from radixrt.token_ids import common_prefix_len


class LlamaCppBackend(Backend):
    """`gguf_path`: the weights llama.cpp runs; `model_dir`: the HF folder whose chat template the
    programs use. `n_threads`: llama.cpp's threads (the machine's cores, like the other systems)."""

    def __init__(self, gguf_path: str | Path, model_dir: str | Path, *, n_ctx: int = 8192, n_threads: int = 2):
        tokenizer = load_tokenizer(model_dir)
        self._template = ChatTemplate.from_jinja(tokenizer.chat_template, tokenizer.eos_token)
        self._rids = itertools.count()
        self._grammars: dict[tuple[str, str], Any] = {}
        self.prompt_tokens = self.cached_tokens = 0
        self.busy_s = 0.0
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        loaded: Future = Future()
        args = (str(gguf_path), n_ctx, n_threads, loaded)
        self._thread = threading.Thread(target=self._loop, args=args, name="radixrt-bench-llamacpp", daemon=True)
        self._thread.start()
        self.seq: ScoringSequence = loaded.result()

    # ---- Backend -----------------------------------------------------------------------------

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
        if logprobs.return_logprob or sampling.n != 1 or sampling.min_new_tokens:
            raise InvalidRequest("the llama.cpp baseline supports no logprobs, n > 1 or min_new_tokens", "sampling")
        rid = f"llamacpp-{next(self._rids)}"
        if sampling.max_new_tokens == 0:  # a commit: the one sequence keeps only the last prompt
            return GenerateResult(rid=rid, text="", output_ids=[], meta_info={"prompt_tokens": 0, "cached_tokens": 0,
                                                                            "completion_tokens": 0, "finish_reason": None})  # fmt: skip
        grammar = self._grammar(sampling.grammar_key)
        out_ids, text, meta = self._call(lambda: self._generate(prompt, sampling, grammar))
        if on_chunk is not None:
            on_chunk(text)
        return GenerateResult(rid=rid, text=text, output_ids=out_ids, meta_info=meta)

    def score(self, prefix: str, continuations: list[str]) -> ScoreResult:
        scores = self._call(lambda: [self._score(prefix, c) for c in continuations])
        return ScoreResult(rid=f"llamacpp-{next(self._rids)}", scores=scores)

    def flush_cache(self) -> None:
        """Forget the previous prompt: the next request computes all of its tokens."""
        self._call(self.seq.reset)

    def get_server_info(self) -> dict[str, Any]:
        return {"cache_hit_tokens": self.cached_tokens, "prompt_tokens": self.prompt_tokens,
                "busy_s": self.busy_s, "radix_cache": False}  # fmt: skip

    def caches_prefixes(self) -> bool:
        """A prefill-only commit would be replaced by the next request's prompt: never send one."""
        return False

    def shutdown(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=60)

    # ---- the model's thread ------------------------------------------------------------------

    def _loop(self, path: str, n_ctx: int, n_threads: int, loaded: Future) -> None:
        try:
            seq = ScoringSequence(path, n_ctx=n_ctx, n_threads=n_threads)
        except BaseException as e:  # noqa: BLE001 - raised in the constructor's thread
            loaded.set_exception(e)
            return
        loaded.set_result(seq)
        while (job := self._jobs.get()) is not None:
            fn, future = job
            start = time.perf_counter()
            try:
                result, error = fn(), None
            except BaseException as e:  # noqa: BLE001 - a failed request fails its caller only
                result, error = None, e
            self.busy_s += time.perf_counter() - start  # before the caller can read it with its result
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the model's thread after every request that arrived before it."""
        future: Future = Future()
        self._jobs.put((fn, future))
        return future.result()

    def _generate(self, prompt: str, sampling: SamplingParams, grammar: Any) -> tuple[list[int], str, dict]:
        ids = self.seq.tokenize(prompt)
        cached = self.seq.reusable(ids)
        out: list[int] = []
        reason: dict[str, Any] = {"type": "length", "length": 0}
        text = ""
        for token in self.seq.generate(ids, sampling, grammar):
            if token in sampling.stop_token_ids or (self.seq.is_eog(token) and not sampling.ignore_eos):
                reason = {"type": "stop", "matched": token}
                break
            out.append(token)
            text = self.seq.detokenize(out)
            if sampling.stop:
                trimmed, matched = trim_at_stop(text, sampling.stop)
                if matched is not None:
                    text, reason = (text if sampling.no_stop_trim else trimmed), {"type": "stop", "matched": matched}
                    break
            if len(out) >= sampling.max_new_tokens:
                reason = {"type": "length", "length": len(out)}
                break
        self._count(len(ids), cached)
        meta = {"prompt_tokens": len(ids), "cached_tokens": cached, "completion_tokens": len(out),
                "finish_reason": reason}  # fmt: skip
        return out, text, meta

    def _score(self, prefix: str, continuation: str) -> ContinuationScore:
        ids = self.seq.tokenize(prefix + continuation)
        start = max(min(common_prefix_len(self.seq.tokenize(prefix), ids), len(ids) - 1), 1)
        cached = min(self.seq.reusable(ids), start - 1)
        logprobs = self.seq.score(ids, start)
        self._count(len(ids), cached)
        return ContinuationScore(token_ids=ids[start:], logprobs=logprobs, prompt_tokens=len(ids), cached_tokens=cached)

    def _count(self, prompt: int, cached: int) -> None:
        self.prompt_tokens += prompt
        self.cached_tokens += cached

    def _grammar(self, key: tuple[str, str] | None) -> Any:
        """llama.cpp's grammar for (kind, source), built once per grammar."""
        if key is None:
            return None
        if key not in self._grammars:
            from llama_cpp import LlamaGrammar

            kind, source = key
            if kind == "json_schema":
                self._grammars[key] = LlamaGrammar.from_json_schema(source, verbose=False)
            elif kind in ("regex", "choices"):
                pattern = source if kind == "regex" else "|".join(_escape(c) for c in json.loads(source))
                self._grammars[key] = LlamaGrammar.from_string(regex_to_gbnf(pattern), verbose=False)
            else:
                raise InvalidRequest(f"the llama.cpp baseline has no {kind} constraint", kind)
        return self._grammars[key]


def _escape(text: str) -> str:
    return "".join("\\" + c if c in "\\.^$|?*+()[]{}" else c for c in text)
