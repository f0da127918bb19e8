"""The choices of one OpenAI request, each run as an async generator over Frontend streams.

A choice yields `Piece`s (new text and logprobs, when streaming) and ends with one `Final`.
Plain text, a forced tool call and the two-step `auto` tool decision (see tool_calls) are all
choices of this shape, so streaming and non-streaming answers are built the same way, and
`merge` interleaves the n choices of a request. Leaving a choice early closes its streams,
which aborts its requests in the worker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from radixrt.errors import error_for_status
from radixrt.runtime.openai import tool_calls
from radixrt.runtime.protocol import (
    ErrorReply,
    GenerateChunk,
    GenerateRequest,
    GenerateResult,
    SamplingParams,
)
from radixrt.runtime.server.frontend import Frontend
from radixrt.runtime.server.request_stream import Stream


@dataclass
class Piece:
    """New output of a streaming choice."""

    index: int
    text: str
    logprobs: list[list[Any]]  # [[logprob, id, text, top]] for the new tokens (top: [[lp, id, text]] or None)


@dataclass
class Final:
    """A finished choice. `text` is its content (the raw output when a call was cut short)."""

    index: int
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    logprobs: list[list[Any]] = field(default_factory=list)
    prompt_logprobs: list[list[Any]] | None = None  # completions' echo: [[logprob|None, id, text, top]]
    tool_call: tuple[str, str, str] | None = None  # (id, name, arguments)


@dataclass
class Spec:
    """What one choice submits: prompt ids (and text, for tool steps), params, logprob options."""

    input_ids: list[int]
    sampling: SamplingParams
    top_logprobs: int | None = None  # None: no logprobs
    prompt_logprobs: bool = False
    prompt_text: str = ""


class Submitter:
    """Submits the requests of one HTTP call under its own namespace; remembers its streams.
    `api_key`, `cache_salt` and `pin_s` go on every request (the cache namespace and pin)."""

    def __init__(
        self,
        frontend: Frontend,
        stream: bool,
        api_key: str | None = None,
        cache_salt: str | None = None,
        pin_s: float | None = None,
    ):
        self.frontend = frontend
        self.stream = stream
        self.tenancy = {"api_key": api_key, "cache_salt": cache_salt, "pin_s": pin_s}
        self.namespace = f"oai-{uuid.uuid4().hex}/"
        self.streams: list[Stream] = []

    def submit(self, spec: Spec, sampling: SamplingParams | None = None) -> Stream:
        req = GenerateRequest(
            rid=uuid.uuid4().hex,
            input_ids=spec.input_ids,
            sampling=sampling or spec.sampling,
            return_logprob=spec.top_logprobs is not None,
            logprob_start_len=0 if spec.prompt_logprobs else -1,
            top_logprobs_num=spec.top_logprobs or 0,
            stream=self.stream,
            **self.tenancy,
        )
        stream = self.frontend.generate(req, self.namespace)
        self.streams.append(stream)
        return stream


async def outputs(stream: Stream) -> AsyncIterator[GenerateChunk | GenerateResult]:
    """A stream's chunks and results; an ErrorReply raises its RadixRTError. Closes the stream when left."""
    try:
        async for msg in stream:
            if isinstance(msg, ErrorReply):
                raise error_for_status(msg.status, msg.message, msg.param)
            if isinstance(msg, (GenerateChunk, GenerateResult)):
                yield msg
    finally:
        stream.close()


def finish_reason(meta: dict[str, Any]) -> str:
    kind = (meta.get("finish_reason") or {}).get("type")
    return "length" if kind == "length" else "stop"


def logprob_rows(meta: dict[str, Any], prefix: str = "output") -> list[list[Any]]:
    """[[logprob, id, text, top]] from meta_info's `{prefix}_token_logprobs` / `_top_logprobs`."""
    tokens = meta.get(f"{prefix}_token_logprobs") or []
    tops = meta.get(f"{prefix}_top_logprobs") or [None] * len(tokens)
    return [[lp, t, text, top] for (lp, t, text), top in zip(tokens, tops)]


def _final(index: int, result: GenerateResult, **kw: Any) -> Final:
    meta = result.meta_info
    return Final(
        index=index,
        text=kw.pop("text", result.text),
        finish_reason=kw.pop("finish_reason", finish_reason(meta)),
        prompt_tokens=meta.get("prompt_tokens", 0),
        completion_tokens=meta.get("completion_tokens", len(result.output_ids)),
        cached_tokens=meta.get("cached_tokens", 0),
        **kw,
    )


async def plain_choice(
    index: int, spec: Spec, sub: Submitter, sampling: SamplingParams | None = None
) -> AsyncIterator[Any]:
    """Text generation: Pieces as the text grows, then its Final."""
    sent = 0  # logprob rows already yielded
    async for msg in outputs(sub.submit(spec, sampling)):
        rows = logprob_rows(msg.meta_info) if spec.top_logprobs is not None else []
        if isinstance(msg, GenerateChunk):
            if msg.text or len(rows) > sent:
                yield Piece(index, msg.text, rows[sent:])
            sent = len(rows)
        else:
            prompt_rows = _prompt_rows(msg.meta_info, spec, sub) if spec.prompt_logprobs else None
            yield _final(index, msg, logprobs=rows, prompt_logprobs=prompt_rows)


def _prompt_rows(meta: dict[str, Any], spec: Spec, sub: Submitter) -> list[list[Any]]:
    """One row per prompt token; tokens the worker did not score (the first one) get logprob None."""
    rows = logprob_rows(meta, "input")
    missing = spec.input_ids[: len(spec.input_ids) - len(rows)]
    decode = sub.frontend.tm.tokenizer.decode
    return [[None, t, decode([t]), None] for t in missing] + rows


async def tool_choice(index: int, spec: Spec, sub: Submitter, schema: dict[str, Any]) -> AsyncIterator[Any]:
    """A call generated under `schema` after the prompt `... <tool_call>\\n`; ends with its Final."""
    ids = sub.frontend.tm.tokenizer.encode(spec.prompt_text + tool_calls.CALL_PROMPT, add_special_tokens=False)
    primed = Spec(ids, spec.sampling, prompt_text=spec.prompt_text)
    # NOTE: stop strings end text answers; a call ends where its grammar does (a stop inside would cut it)
    schema_json = msgspec.json.encode(schema).decode()
    sampling = msgspec.structs.replace(spec.sampling, regex=None, json_schema=schema_json, stop=[])
    async for msg in outputs(sub.submit(primed, sampling)):
        if isinstance(msg, GenerateResult):
            yield _call_final(index, msg)


def _call_final(index: int, result: GenerateResult) -> Final:
    call = tool_calls.parse_call(result.text)
    if call is None:  # cut short by max_tokens: no valid arguments to return
        return _final(index, result)
    return _final(index, result, text="", finish_reason="tool_calls", tool_call=(tool_calls.new_call_id(), *call))


async def auto_choice(index: int, spec: Spec, sub: Submitter, schema: dict[str, Any]) -> AsyncIterator[Any]:
    """The model answers in text (streamed as it grows) or starts a call, generated under `schema`."""
    decide = msgspec.structs.replace(spec.sampling, regex=tool_calls.AUTO_REGEX, json_schema=None)
    text = ""
    async for event in plain_choice(index, spec, sub, decide):
        if isinstance(event, Piece):
            text += event.text
            if not tool_calls.is_call_marker(text):
                yield event
            continue
        if not tool_calls.is_call_marker(event.text) or event.finish_reason == "length":
            yield event
            return
        async for call in tool_choice(index, spec, sub, schema):
            call.prompt_tokens, call.cached_tokens = event.prompt_tokens, event.cached_tokens
            call.completion_tokens += event.completion_tokens
            yield call


async def merge(choices: list[AsyncIterator[Any]]) -> AsyncIterator[Any]:
    """The events of all choices as they come. Leaving early closes every choice."""
    # NOTE: maxsize=1 keeps unread output in the Streams, which merge chunks, not in this queue.
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
    done = object()

    async def pump(choice: AsyncIterator[Any]) -> None:
        try:
            async for event in choice:
                await queue.put(event)
        except Exception as e:  # noqa: BLE001 - re-raised by the reader
            await queue.put(e)
        finally:
            await choice.aclose()  # type: ignore[attr-defined]
        await queue.put(done)

    tasks = [asyncio.ensure_future(pump(c)) for c in choices]
    try:
        running = len(tasks)
        while running:
            event = await queue.get()
            if isinstance(event, Exception):
                raise event
            if event is done:
                running -= 1
            else:
                yield event
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
