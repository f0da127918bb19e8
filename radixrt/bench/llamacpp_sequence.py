"""One llama.cpp KV sequence (llama-cpp-python's `Llama`) with the operations the baseline needs.

Everything that reaches into llama-cpp-python's internals is here (pinned: the `llamacpp` extra):
scoring asks llama.cpp for the logits of the continuation rows only, through the `Llama` object's
own batch and context, and keeps its token record (`input_ids`, `n_tokens`) consistent, so the
next `generate` still reuses the shared prefix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from radixrt.runtime.protocol import SamplingParams
from radixrt.token_ids import common_prefix_len


class ScoringSequence:
    """A `Llama` with n_ctx tokens of KV; not thread-safe (the backend calls it from one thread)."""

    def __init__(self, gguf_path: str, *, n_ctx: int, n_threads: int):
        import llama_cpp

        self._lib = llama_cpp
        self.llm = llama_cpp.Llama(gguf_path, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                                   verbose=False)  # fmt: skip
        self.n_vocab = self.llm.n_vocab()

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's tokens for `text`, special tokens (chat markers) parsed, BOS as the model says."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.llm._model.vocab, token))

    def reusable(self, ids: list[int]) -> int:
        """Tokens of `ids` whose KV the sequence holds now (`Llama.generate` recomputes at least the last)."""
        held = self.llm.input_ids[: self.llm.n_tokens].tolist()
        return min(common_prefix_len(held, ids), len(ids) - 1)

    def reset(self) -> None:
        self.llm.reset()

    def generate(self, ids: list[int], sampling: SamplingParams, grammar: Any) -> Iterator[int]:
        """Sampled tokens after `ids` (Llama.generate: reuses the held prefix), until the caller stops."""
        if sampling.seed is not None:
            self.llm.set_seed(sampling.seed)
        return self.llm.generate(
            ids,
            temp=0.0 if sampling.is_greedy else sampling.temperature,
            top_k=max(sampling.top_k, 0),
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            repeat_penalty=sampling.repetition_penalty,
            frequency_penalty=sampling.frequency_penalty,
            presence_penalty=sampling.presence_penalty,
            grammar=grammar,
        )

    def score(self, ids: list[int], start: int) -> list[float]:
        """Logprobs of ids[start:] (start >= 1), each given the tokens before it.

        The sequence keeps the held prefix up to start - 1, computes the rest of the prefix with
        logits for its last row only (it predicts ids[start]) and the continuation with logits
        for every row.
        """
        keep = min(self.reusable(ids), start - 1)
        self._truncate(keep)
        self.llm.eval(ids[keep:start])
        rows = [self._row(-1)]
        if start < len(ids) - 1:
            rows.append(self._decode_all(ids[start:-1]))
        logits = np.concatenate([r.reshape(-1, self.n_vocab) for r in rows])  # [len(ids) - start, V]
        top = logits.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1, dtype=np.float64))
        picked = logits[np.arange(len(logits)), ids[start:]]
        return (picked - lse).tolist()

    # ---- llama-cpp-python internals (0.3.x) ---------------------------------------------------

    def _truncate(self, n: int) -> None:
        self.llm._ctx.kv_cache_seq_rm(-1, n, -1)
        self.llm.n_tokens = n
        self.llm._requires_eval = True

    def _row(self, i: int) -> np.ndarray:
        pointer = self.llm._ctx.get_logits_ith(i)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def _decode_all(self, tokens: list[int]) -> np.ndarray:
        """Decode `tokens` after the held ones, with logits for every row: [len(tokens), V]."""
        out = []
        for i in range(0, len(tokens), self.llm.n_batch):
            chunk, n_past = tokens[i : i + self.llm.n_batch], self.llm.n_tokens
            self.llm._batch.set_batch(batch=chunk, n_past=n_past, logits_all=True)
            self.llm._ctx.decode(self.llm._batch)
            logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(len(chunk), self.n_vocab))
            out.append(logits.copy())
            self.llm.input_ids[n_past : n_past + len(chunk)] = chunk
            self.llm.n_tokens += len(chunk)
        self.llm._requires_eval = True  # the next generate re-decodes its last token before sampling
        return np.concatenate(out)
