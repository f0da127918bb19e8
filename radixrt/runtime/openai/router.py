"""The OpenAI-compatible API: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

An APIRouter that `http.app.create_app` includes, so it shares the app's API-key check, body
limits and error handlers (errors in OpenAI's `{"error": {...}}` shape). Each of the n choices of
a request is its own worker request (seed + i when seeded); the radix cache shares their prompt.
See docs/openai.md for the supported fields and how tool calls are generated.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response

from radixrt.errors import InvalidRequest, RadixRTError, error_for_status
from radixrt.runtime.http.common import bearer_key, error_json, http_options, json_response, read_json
from radixrt.runtime.http.sse import StallGuardedResponse, until_done_or_gone
from radixrt.runtime.openai import responses as out
from radixrt.runtime.openai import tool_calls
from radixrt.runtime.openai.choices import (
    Final,
    Spec,
    Submitter,
    auto_choice,
    merge,
    plain_choice,
    tool_choice,
)
from radixrt.runtime.openai.protocol import (
    COMPLETIONS_MAX_TOKENS,
    ChatRequest,
    CompletionRequest,
    chat_grammar,
    parse_chat,
    parse_completion,
    prompts,
    sampling_params,
    uses_tools,
)
from radixrt.runtime.server.frontend import Frontend

logger = logging.getLogger(__name__)
T = TypeVar("T")
MODEL_ALIASES = ("default",)

openai_router = APIRouter()


@openai_router.get("/v1/models")
async def list_models(request: Request) -> Response:
    return json_response({"object": "list", "data": [_model_card(_frontend(request))]})


@openai_router.get("/v1/models/{model:path}")
async def get_model(request: Request, model: str) -> Response:
    frontend = _frontend(request)
    try:
        served_model(frontend, model)
    except InvalidRequest as e:
        raise error_for_status(404, str(e), "model") from None
    return json_response(_model_card(frontend))


@openai_router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    frontend = _frontend(request)
    req = parse_chat(await _body(request))
    answer = out.Answer.new("chat.completion", served_model(frontend, req.model), _special_ids(frontend))
    frontend.check_accepting()  # before rendering: a draining or full server answers fast
    sub = Submitter(frontend, bool(req.stream), bearer_key(request), req.cache_salt, req.pin_s)
    n, spec = req.n or 1, _chat_spec(frontend, req)
    choices = [_chat_choice(i, _seeded(spec, i), sub, req) for i in range(n)]
    logprobs = bool(req.logprobs)
    stream = out.ChatStream(answer, n, logprobs, req.include_usage)
    return await _answer(request, sub, choices, stream, lambda finals: out.chat_completion(answer, finals, n, logprobs))


@openai_router.post("/v1/completions")
async def completions(request: Request) -> Response:
    frontend = _frontend(request)
    req = parse_completion(await _body(request))
    answer = out.Answer.new("text_completion", served_model(frontend, req.model), _special_ids(frontend))
    frontend.check_accepting()
    sub = Submitter(frontend, bool(req.stream), bearer_key(request), req.cache_salt, req.pin_s)
    n, logprobs = req.n or 1, req.logprobs is not None
    choices, texts = _completion_choices(frontend, req, sub)
    echo = [t if req.echo else None for t in texts]
    stream = out.CompletionStream(answer, n, logprobs, req.include_usage, echo)

    def body(finals: list[Final]) -> dict[str, Any]:
        bodies = [out.completion_choice(answer, f, echo[f.index // n], logprobs) for f in finals]
        return out.completion(answer, bodies, finals, n)

    return await _answer(request, sub, choices, stream, body)


# ---- requests ------------------------------------------------------------------------------


def _frontend(request: Request) -> Frontend:
    return request.app.state.frontend


async def _body(request: Request) -> Any:
    return await read_json(request, http_options(request))


def served_model(frontend: Frontend, name: str | None) -> str:
    """The id /v1/models shows; `name` may also be the model folder or "default" (or left out)."""
    served = Path(frontend.tm.model_dir).name
    if name is None or name in (served, frontend.tm.model_dir, *MODEL_ALIASES):
        return served
    raise InvalidRequest(f"model {name!r} is not served here; this server serves {served!r}", "model")


def _model_card(frontend: Frontend) -> dict[str, Any]:
    return {
        "id": served_model(frontend, None),
        "object": "model",
        "created": 0,
        "owned_by": "radixrt",
        "root": frontend.tm.model_dir,
        "max_model_len": frontend.tm.context_length,
    }


def _special_ids(frontend: Frontend) -> frozenset[int]:
    return frozenset(frontend.tm.tokenizer.all_special_ids)


def render_chat(frontend: Frontend, req: ChatRequest) -> str:
    """The prompt: the messages (and tools) through the model's chat template."""
    tokenizer = frontend.tm.tokenizer
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise InvalidRequest("the model has no chat template; use /v1/completions", "messages")
    native = bool(req.tools) and tool_calls.template_knows_tools(template)
    messages = tool_calls.template_messages(req.messages, req.tools, native)
    tools = [tool_calls.tool_spec(t) for t in req.tools or []] if native else None
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # noqa: BLE001 - the template's own checks (e.g. role order) raise
        raise InvalidRequest(f"the chat template rejected the messages: {e}", "messages") from None


def _chat_spec(frontend: Frontend, req: ChatRequest) -> Spec:
    text = render_chat(frontend, req)
    ids = frontend.tm.tokenizer.encode(text, add_special_tokens=False)
    limit = frontend.tm.context_length
    if len(ids) >= limit:
        raise InvalidRequest(f"the messages have {len(ids)} tokens; the context length is {limit}", "messages")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    sampling = sampling_params(req, max_tokens, frontend.args.max_new_tokens_limit)
    sampling = msgspec.structs.replace(sampling, **chat_grammar(req))
    top = (req.top_logprobs or 0) if req.logprobs else None
    return Spec(ids, sampling, top_logprobs=top, prompt_text=text)


def _seeded(spec: Spec, i: int) -> Spec:
    if spec.sampling.seed is None or i == 0:
        return spec
    sampling = msgspec.structs.replace(spec.sampling, seed=spec.sampling.seed + i)
    return Spec(spec.input_ids, sampling, spec.top_logprobs, spec.prompt_logprobs, spec.prompt_text)


def _chat_choice(index: int, spec: Spec, sub: Submitter, req: ChatRequest) -> AsyncIterator[Any]:
    if not uses_tools(req):
        return plain_choice(index, spec, sub)
    assert req.tools is not None
    schema = tool_calls.call_schema(req.tools, req.tool_choice)
    if req.tool_choice in (None, "auto"):
        return auto_choice(index, spec, sub, schema)
    return tool_choice(index, spec, sub, schema)


def _completion_choices(frontend: Frontend, req: CompletionRequest, sub: Submitter) -> tuple[list[Any], list[str]]:
    """n choices per prompt (choice p * n + j is prompt p's j-th), and the prompts' texts."""
    max_tokens = COMPLETIONS_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    sampling = sampling_params(req, max_tokens, frontend.args.max_new_tokens_limit)
    n, texts, choices = req.n or 1, [], []
    for p, prompt in enumerate(prompts(req)):
        ids = _checked_ids(frontend, frontend.tm.encode(prompt) if isinstance(prompt, str) else prompt)
        texts.append(prompt if isinstance(prompt, str) else frontend.tm.tokenizer.decode(ids))
        echo_logprobs = bool(req.echo) and req.logprobs is not None
        spec = Spec(ids, sampling, top_logprobs=req.logprobs, prompt_logprobs=echo_logprobs)
        choices += [plain_choice(p * n + j, _seeded(spec, j), sub) for j in range(n)]
    return choices, texts


def _checked_ids(frontend: Frontend, ids: list[int]) -> list[int]:
    bad = [t for t in ids if not 0 <= t < frontend.tm.vocab_size]
    if bad:
        raise InvalidRequest(f"prompt has token ids outside the vocabulary: {bad[:5]}", "prompt")
    limit = frontend.tm.context_length
    if len(ids) >= limit:
        raise InvalidRequest(f"a prompt has {len(ids)} tokens; the context length is {limit}", "prompt")
    return ids


# ---- answering -----------------------------------------------------------------------------


def _event(data: Any) -> bytes:
    return b"data: " + msgspec.json.encode(data) + b"\n\n"


async def _answer(
    request: Request, sub: Submitter, choices: list[Any], stream: out.EventStream, body: Callable[[list[Final]], Any]
) -> Response:
    """The SSE stream when streaming, else the JSON `body` of all finished choices."""
    if sub.stream:
        return await _streaming(request, sub, choices, stream)
    events = merge(choices)

    async def collect() -> list[Final]:
        return [e async for e in events if isinstance(e, Final)]

    finals = await until_done_or_gone(request, collect(), http_options(request).disconnect_poll)
    return Response(status_code=499) if finals is None else json_response(body(finals))  # 499: nobody is listening


async def _streaming(request: Request, sub: Submitter, choices: list[Any], stream: out.EventStream) -> Response:
    """An SSE response. Its first event is awaited first, so an early error (a bad grammar, an
    overloaded server) is answered with its HTTP status instead of inside a 200 stream."""
    events = merge(choices)

    async def first_event() -> Any:
        return await events.__anext__()

    first = await until_done_or_gone(request, first_event(), http_options(request).disconnect_poll)
    if first is None:
        return Response(status_code=499)
    timeout = http_options(request).client_timeout
    body = _sse(_after(first, events), stream)
    return StallGuardedResponse(body, sub.streams, timeout, media_type="text/event-stream")


async def _after(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        yield first
        async for event in rest:
            yield event
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


async def _sse(events: AsyncIterator[Any], stream: out.EventStream) -> AsyncIterator[bytes]:
    """The stream's chunks for each event as SSE, an error event if one is raised, then `[DONE]`."""
    try:
        for data in stream.opening():
            yield _event(data)
        async for event in events:
            for data in stream.chunks(event):
                yield _event(data)
    except RadixRTError as e:
        yield _event(error_json(e.status, str(e), getattr(e, "param", None)))
    except Exception as e:
        logger.exception("OpenAI stream failed")
        yield _event(error_json(500, f"internal error: {e}"))
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    yield b"data: [DONE]\n\n"
