"""Frontend logic shared by the HTTP/ZMQ frontend process and the in-process Engine.

Turns client requests into token ids (validated), and the worker's token outputs back into
text and SGLang-shaped `meta_info`. Never touches tensors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from radixrt.errors import InvalidRequest
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.protocol import (
    ContinuationScore,
    ErrorOut,
    ErrorReply,
    GenerateChunk,
    GenerateRequest,
    GenerateResult,
    ModelInfo,
    SamplingParams,
    ScoreRequest,
    ScoreResult,
    TokenizedRequest,
    TokenOut,
)
from radixrt.runtime.server.detokenizer import IncrementalDetokenizer, stop_safe_len, trim_at_stop
from radixrt.token_ids import common_prefix_len

MAX_TOP_LOGPROBS = 20


def load_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


class TokenizerManager:
    def __init__(self, model_dir: str | Path, args: ServerArgs, context_length: int, tokenizer: Any = None):
        self.model_dir = str(model_dir)
        self.args = args
        self.context_length = context_length
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
        self.vocab_size = len(self.tokenizer)
        self._token_texts: dict[int, str] = {}

    def token_text(self, token_id: int) -> str:
        """One token decoded alone (logprob entries); memoised since streams re-send them per chunk."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id])
        return text

    def model_info(self) -> ModelInfo:
        tok = self.tokenizer
        return ModelInfo(
            model_path=self.model_dir,
            context_length=self.context_length,
            vocab_size=self.vocab_size,
            chat_template=getattr(tok, "chat_template", None),
            bos_token=tok.bos_token,
            eos_token=tok.eos_token,
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True)

    def tokenize(self, req: GenerateRequest) -> list[TokenizedRequest]:
        """Validate and tokenize; n > 1 becomes n requests `{rid}-{i}` sharing the prompt."""
        ids = self._prompt_ids(req)
        params = self._checked_params(req.sampling, len(ids))
        if not -1 <= req.logprob_start_len < len(ids):
            raise InvalidRequest(
                f"logprob_start_len={req.logprob_start_len} must be -1 or within the prompt (0..{len(ids) - 1})",
                "logprob_start_len",
            )
        if not 0 <= req.top_logprobs_num <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"top_logprobs_num must be in 0..{MAX_TOP_LOGPROBS}", "top_logprobs_num")
        pin_s = self._checked_pin(req.pin_s)
        n = params.n
        subs = []
        for i in range(n):
            seed = None if params.seed is None else params.seed + i
            sub_params = _replace(params, n=1, seed=seed)
            subs.append(
                TokenizedRequest(
                    rid=req.rid if n == 1 else f"{req.rid}-{i}",
                    input_ids=ids,
                    sampling=sub_params,
                    return_logprob=req.return_logprob,
                    logprob_start_len=req.logprob_start_len if req.return_logprob else -1,
                    top_logprobs_num=req.top_logprobs_num if req.return_logprob else 0,
                    stream=req.stream,
                    cache_salt=req.cache_salt or "",
                    pin_s=pin_s,
                    program_id=req.program_id,
                )
            )
        return subs

    def _checked_pin(self, pin_s: float | None) -> float:
        if pin_s is None:
            return 0.0
        limit = self.args.max_pin_s
        if not 0 < pin_s <= limit:  # also refuses NaN
            raise InvalidRequest(f"pin_s must be > 0 and at most {limit:g} seconds (--max-pin-s), got {pin_s}", "pin_s")
        return float(pin_s)

    def _prompt_ids(self, req: GenerateRequest) -> list[int]:
        if (req.text is None) == (req.input_ids is None):
            raise InvalidRequest("exactly one of text and input_ids must be given", "text")
        ids = self.encode(req.text) if req.text is not None else list(req.input_ids or [])
        if not ids:
            raise InvalidRequest("the prompt is empty", "text" if req.text is not None else "input_ids")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequest(f"input_ids contains ids outside the vocabulary: {bad[:5]}", "input_ids")
        if len(ids) >= self.context_length:
            raise InvalidRequest(
                f"the prompt has {len(ids)} tokens; the context length is {self.context_length}", "text"
            )
        return ids

    def _checked_params(self, params: SamplingParams, prompt_len: int) -> SamplingParams:
        params.verify(self.args.max_new_tokens_limit)
        room = self.context_length - prompt_len
        if params.max_new_tokens > room:
            params = _replace(params, max_new_tokens=room)
        return params

    def new_state(self, req: GenerateRequest, tokenized: list[TokenizedRequest]) -> RequestState:
        return RequestState(self, req, tokenized)

    def score(self, req: ScoreRequest) -> ScoreJob:
        return ScoreJob(self, req)


def _replace(params: SamplingParams, **changes: Any) -> SamplingParams:
    import msgspec

    return msgspec.structs.replace(params, **changes)


class _SubState:
    """One sampled sequence of a request (n > 1 has several)."""

    def __init__(self, tm: TokenizerManager, tokenized: TokenizedRequest, incremental: bool):
        self.tokenized = tokenized
        self.incremental = incremental  # streamed: text per token; else decoded once at the end
        self.detok = IncrementalDetokenizer(tm.tokenizer, tokenized.sampling.skip_special_tokens)
        self.shown = 0  # characters of detok.text already streamed
        self.ids_shown = 0  # output ids already streamed
        self.finish_reason: dict[str, Any] | None = None
        self.meta: dict[str, Any] = {}
        self.output_logprobs: list[float] = []
        self.output_top: list[list[tuple[float, int]]] = []
        self.input_logprobs: list[float | None] | None = None
        self.input_ids_scored: list[int] | None = None
        self.input_top: list[list[tuple[float, int]]] | None = None

    def add(self, out: TokenOut) -> str:
        if self.incremental:
            self.detok.add(out.new_ids)
        else:
            self.detok.ids.extend(out.new_ids)
        self.output_logprobs += out.output_logprobs or []
        self.output_top += out.output_top_logprobs or []
        if out.input_logprobs is not None:
            self.input_logprobs, self.input_ids_scored = out.input_logprobs, out.input_ids_scored
            self.input_top = out.input_top_logprobs
        self.meta = {
            "prompt_tokens": out.prompt_tokens,
            "cached_tokens": out.cached_tokens,
            "completion_tokens": out.completion_tokens,
            **(out.extra or {}),
        }
        if out.finish_reason is not None:
            self.detok.finish()
            self.finish_reason = out.finish_reason
        return self._visible_delta() if self.incremental else ""

    def final_text(self) -> str:
        params = self.tokenized.sampling
        text = self.detok.text
        if params.stop and not params.no_stop_trim:
            text, _ = trim_at_stop(text, params.stop)
        return text

    def _visible_delta(self) -> str:
        stops = self.tokenized.sampling.stop
        if self.finish_reason is not None:
            text = self.final_text()
        elif stops:
            text = self.detok.text[: stop_safe_len(self.detok.text, stops)]
            text, _ = trim_at_stop(text, stops)
        else:
            text = self.detok.text
        delta = text[self.shown :]
        self.shown = max(self.shown, len(text))
        return delta


class RequestState:
    """Accumulates a request's TokenOuts into chunks and one final result."""

    def __init__(self, tm: TokenizerManager, req: GenerateRequest, tokenized: list[TokenizedRequest]):
        self.tm = tm
        self.req = req
        self.subs = {t.rid: _SubState(tm, t, req.stream and len(tokenized) == 1) for t in tokenized}
        self.created = time.perf_counter()

    @property
    def worker_rids(self) -> list[str]:
        return list(self.subs)

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.subs.values())

    def on_output(self, out: TokenOut) -> list[GenerateChunk | GenerateResult]:
        sub = self.subs[out.rid]
        delta = sub.add(out)
        msgs: list[GenerateChunk | GenerateResult] = []
        if self.req.stream and (delta or out.finish_reason is not None) and len(self.subs) == 1:
            ids = sub.detok.ids[sub.ids_shown :]
            sub.ids_shown = len(sub.detok.ids)
            msgs.append(GenerateChunk(rid=self.req.rid, text=delta, output_ids=ids, meta_info=self._meta(sub)))
        if self.finished:
            msgs.extend(self.results())
        return msgs

    def on_error(self, err: ErrorOut) -> ErrorReply:
        return ErrorReply(rid=self.req.rid, status=err.status, message=err.message, param=err.param)

    def results(self) -> list[GenerateResult]:
        """One GenerateResult per sampled sequence (n of them), all carrying the client's rid."""
        return [
            GenerateResult(rid=self.req.rid, text=s.final_text(), output_ids=list(s.detok.ids), meta_info=self._meta(s))
            for s in self.subs.values()
        ]

    def _meta(self, sub: _SubState) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": self.req.rid,
            "finish_reason": sub.finish_reason,
            **sub.meta,
            "e2e_latency": time.perf_counter() - self.created,
        }
        if self.req.return_logprob:
            meta.update(self._logprob_meta(sub))
        return meta

    def _logprob_meta(self, sub: _SubState) -> dict[str, Any]:
        text = self.tm.token_text
        ids = sub.detok.ids
        meta: dict[str, Any] = {
            "output_token_logprobs": [[lp, t, text(t)] for lp, t in zip(sub.output_logprobs, ids)],
        }
        if self.req.top_logprobs_num:
            meta["output_top_logprobs"] = [[[lp, t, text(t)] for lp, t in row] for row in sub.output_top]
        if sub.input_logprobs is not None and sub.input_ids_scored is not None:
            meta["input_token_logprobs"] = [[lp, t, text(t)] for lp, t in zip(sub.input_logprobs, sub.input_ids_scored)]
            if self.req.top_logprobs_num and sub.input_top is not None:
                meta["input_top_logprobs"] = [[[lp, t, text(t)] for lp, t in row] for row in sub.input_top]
        return meta


class ScoreJob:
    """`select`: score each continuation after one shared prefix.

    Each continuation is tokenized together with the prefix; its tokens start at the first
    position where that tokenization leaves the prefix's own, so merges across the boundary
    (a leading space, a single-token choice) are scored as the model would see them.
    """

    def __init__(self, tm: TokenizerManager, req: ScoreRequest):
        if not req.continuations:
            raise InvalidRequest("continuations must not be empty", "continuations")
        self.rid = req.rid
        prefix_ids = tm.encode(req.prefix) if req.prefix else []
        self.requests: list[TokenizedRequest] = []
        self.boundaries: list[int] = []
        for i, cont in enumerate(req.continuations):
            ids = tm.encode(req.prefix + cont)
            if len(ids) >= tm.context_length:
                raise InvalidRequest(f"prefix + continuation {i} has {len(ids)} tokens; context is {tm.context_length}")
            start = common_prefix_len(prefix_ids, ids)
            start = min(start, len(ids) - 1)
            self.boundaries.append(start)
            self.requests.append(
                TokenizedRequest(
                    rid=f"{req.rid}-s{i}",
                    input_ids=ids,
                    sampling=SamplingParams(max_new_tokens=0),
                    return_logprob=True,
                    logprob_start_len=start,
                    cache_salt=req.cache_salt or "",
                )
            )
        self._outs: dict[str, TokenOut] = {}

    @property
    def worker_rids(self) -> list[str]:
        return [r.rid for r in self.requests]

    def on_output(self, out: TokenOut) -> ScoreResult | None:
        if out.finish_reason is None:
            return None
        self._outs[out.rid] = out
        if len(self._outs) < len(self.requests):
            return None
        scores = []
        for req in self.requests:
            o = self._outs[req.rid]
            pairs = [(lp, t) for lp, t in zip(o.input_logprobs or [], o.input_ids_scored or []) if lp is not None]
            scores.append(
                ContinuationScore(
                    token_ids=[t for _, t in pairs],
                    logprobs=[lp for lp, _ in pairs],
                    prompt_tokens=o.prompt_tokens,
                    cached_tokens=o.cached_tokens,
                )
            )
        return ScoreResult(rid=self.rid, scores=scores)
