"""OpenAI response bodies: chat completions, completions, usage, logprobs, and their SSE streams."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from radixrt.runtime.openai.choices import Final, Piece


@dataclass(frozen=True)
class Answer:
    """What every object of one response shares."""

    kind: str  # "chat.completion" | "text_completion"
    model: str
    special_ids: frozenset[int]  # token ids left out of logprobs (EOS and the like)
    id: str = ""
    created: int = 0

    @classmethod
    def new(cls, kind: str, model: str, special_ids: frozenset[int]) -> Answer:
        prefix = "chatcmpl-" if kind == "chat.completion" else "cmpl-"
        return cls(kind, model, special_ids, prefix + uuid.uuid4().hex, int(time.time()))

    def envelope(self, kind: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": kind or self.kind, "created": self.created, "model": self.model}

    def visible(self, rows: list[list[Any]], text: str | None = None) -> list[list[Any]]:
        """Logprob rows without special tokens; with `text`, only those the text shows
        (a stop string cuts the text, not the tokens)."""
        rows = [r for r in rows if r[1] not in self.special_ids]
        if text is None:
            return rows
        out, size = [], 0
        for row in rows:
            if size >= len(text):
                break
            out.append(row)
            size += len(row[2])
        return out


def usage(finals: list[Final], n: int) -> dict[str, Any]:
    """Token counts; every prompt (shared by its n choices) counts once."""
    ordered = sorted(finals, key=lambda f: f.index)
    groups = [ordered[i : i + n] for i in range(0, len(ordered), n)]
    prompt = sum(g[0].prompt_tokens for g in groups)
    cached = sum(max(f.cached_tokens for f in g) for g in groups)
    completion = sum(f.completion_tokens for f in ordered)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


# ---- chat ----------------------------------------------------------------------------------


def _token(lp: float | None, text: str) -> dict[str, Any]:
    return {"token": text, "logprob": lp, "bytes": list(text.encode())}


def chat_logprobs(rows: list[list[Any]]) -> dict[str, Any]:
    content = []
    for lp, _id, text, top in rows:
        content.append({**_token(lp, text), "top_logprobs": [_token(t_lp, t_text) for t_lp, _t, t_text in top or []]})
    return {"content": content}


def tool_call_json(call: tuple[str, str, str], index: int | None = None) -> dict[str, Any]:
    ident, name, arguments = call
    out = {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}
    return out if index is None else {"index": index, **out}


def chat_completion(answer: Answer, finals: list[Final], n: int, logprobs: bool) -> dict[str, Any]:
    choices = []
    for f in sorted(finals, key=lambda f: f.index):
        message: dict[str, Any] = {"role": "assistant", "content": f.text}
        if f.tool_call is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [tool_call_json(f.tool_call)]}
        rows = answer.visible(f.logprobs, f.text)
        choices.append({
            "index": f.index,
            "message": message,
            "logprobs": chat_logprobs(rows) if logprobs else None,
            "finish_reason": f.finish_reason,
        })  # fmt: skip
    return {**answer.envelope(), "choices": choices, "usage": usage(finals, n)}


def chat_chunk(answer: Answer, index: int, delta: dict[str, Any], with_usage: bool, **extra: Any) -> dict[str, Any]:
    """One `chat.completion.chunk` for choice `index` (extra: finish_reason, logprobs)."""
    choice = {"index": index, "delta": delta, **_ending(extra)}
    chunk = {**answer.envelope("chat.completion.chunk"), "choices": [choice]}
    return {**chunk, "usage": None} if with_usage else chunk


def _ending(extra: dict[str, Any]) -> dict[str, Any]:
    return {"logprobs": extra.get("logprobs"), "finish_reason": extra.get("finish_reason")}


def usage_chunk(answer: Answer, kind: str, usage_body: dict[str, Any]) -> dict[str, Any]:
    return {**answer.envelope(kind), "choices": [], "usage": usage_body}


# ---- completions ---------------------------------------------------------------------------


def completion_logprobs(rows: list[list[Any]], offset: int) -> dict[str, Any]:
    """The legacy logprobs object; `offset` is the text offset of the first token."""
    tokens, offsets = [], []
    for _lp, _id, text, _top in rows:
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
    tops = [None if lp is None else {t_text: t_lp for t_lp, _t, t_text in top or []} for lp, *_, top in rows]
    return {"tokens": tokens, "token_logprobs": [r[0] for r in rows], "top_logprobs": tops, "text_offset": offsets}


def completion_choice(answer: Answer, f: Final, echo_text: str | None, logprobs: bool) -> dict[str, Any]:
    prefix = echo_text or ""
    lp = None
    if logprobs:
        lp = completion_logprobs(answer.visible(f.logprobs, f.text), len(prefix))
        if echo_text is not None:
            echoed = completion_logprobs(answer.visible(f.prompt_logprobs or []), 0)
            lp = {k: echoed[k] + lp[k] for k in lp}
    return {"index": f.index, "text": prefix + f.text, "logprobs": lp, "finish_reason": f.finish_reason}


def completion(answer: Answer, choices: list[dict[str, Any]], finals: list[Final], n: int) -> dict[str, Any]:
    return {**answer.envelope(), "choices": sorted(choices, key=lambda c: c["index"]), "usage": usage(finals, n)}


def completion_chunk(answer: Answer, index: int, text: str, with_usage: bool, **extra: Any) -> dict[str, Any]:
    choice = {"index": index, "text": text, **_ending(extra)}
    chunk = {**answer.envelope(), "choices": [choice]}
    return {**chunk, "usage": None} if with_usage else chunk


# ---- streams -------------------------------------------------------------------------------


class EventStream(Protocol):
    """Turns a request's choice events into the JSON objects of its SSE stream."""

    def opening(self) -> list[dict[str, Any]]: ...

    def chunks(self, event: Piece | Final) -> list[dict[str, Any]]: ...


class ChatStream:
    """`chat.completion.chunk`s: the role first, content deltas, a call, the finish, then usage."""

    def __init__(self, answer: Answer, n: int, logprobs: bool, with_usage: bool):
        self.answer, self.n, self.logprobs, self.with_usage = answer, n, logprobs, with_usage
        self.shown = [""] * n
        self.finals: list[Final] = []

    def opening(self) -> list[dict[str, Any]]:
        return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(self.n)]

    def chunks(self, event: Piece | Final) -> list[dict[str, Any]]:
        i = event.index
        if isinstance(event, Piece):
            self.shown[i] += event.text
            logprobs = chat_logprobs(self.answer.visible(event.logprobs)) if self.logprobs else None
            return [self._chunk(i, {"content": event.text}, logprobs=logprobs)]
        out = []
        if event.tool_call is not None:
            out.append(self._chunk(i, {"tool_calls": [tool_call_json(event.tool_call, 0)]}))
        elif len(event.text) > len(self.shown[i]):  # text held back while it could have been a call
            out.append(self._chunk(i, {"content": event.text[len(self.shown[i]) :]}))
        out.append(self._chunk(i, {}, finish_reason=event.finish_reason))
        self.finals.append(event)
        if self.with_usage and len(self.finals) == self.n:
            out.append(usage_chunk(self.answer, "chat.completion.chunk", usage(self.finals, self.n)))
        return out

    def _chunk(self, index: int, delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return chat_chunk(self.answer, index, delta, self.with_usage, **extra)


class CompletionStream:
    """`text_completion` chunks: the echoed prompt, text deltas, the finish, then usage."""

    def __init__(self, answer: Answer, n: int, logprobs: bool, with_usage: bool, echo: list[str | None]):
        self.answer, self.n, self.logprobs, self.with_usage = answer, n, logprobs, with_usage
        self.echo = echo  # per prompt: its text when echoed
        self.offsets: dict[int, int] = {}  # per choice: the text length streamed so far
        self.finals: list[Final] = []

    def opening(self) -> list[dict[str, Any]]:
        return []

    def chunks(self, event: Piece | Final) -> list[dict[str, Any]]:
        i = event.index
        out = []
        if i not in self.offsets:
            prefix = self.echo[i // self.n] or ""
            self.offsets[i] = len(prefix)
            if prefix:
                out.append(self._chunk(i, prefix))
        if isinstance(event, Piece):
            rows = self.answer.visible(event.logprobs)
            logprobs = completion_logprobs(rows, self.offsets[i]) if self.logprobs else None
            out.append(self._chunk(i, event.text, logprobs=logprobs))
            self.offsets[i] += len(event.text)
            return out
        out.append(self._chunk(i, "", finish_reason=event.finish_reason))
        self.finals.append(event)
        if self.with_usage and len(self.finals) == len(self.echo) * self.n:
            out.append(usage_chunk(self.answer, "text_completion", usage(self.finals, self.n)))
        return out

    def _chunk(self, index: int, text: str, **extra: Any) -> dict[str, Any]:
        return completion_chunk(self.answer, index, text, self.with_usage, **extra)
