"""OpenAI request bodies: typed parsing (msgspec), validation, and their SamplingParams.

Every problem a client can fix is an InvalidRequest (400) naming the OpenAI field. `null`
means the default; unknown extra fields are ignored. A few SGLang extensions are accepted
too (`top_k`, `min_p`, `repetition_penalty`, `min_tokens`, `ignore_eos`, `stop_token_ids`,
`regex`).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import msgspec

from radixrt.errors import InvalidRequest
from radixrt.runtime.protocol import SamplingParams

ROLES = ("system", "developer", "user", "assistant", "tool")
SYSTEM_ROLES = ("system", "developer")
TOOL_CHOICES = ("auto", "none", "required")
MAX_TOP_LOGPROBS = 20
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# Set to anything but null / false / empty, these fields ask for features radixrt does not have.
UNSUPPORTED = ("logit_bias", "audio", "prediction", "functions", "function_call", "web_search_options", "suffix")
Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # what msgpack carries to the worker
_PATH = re.compile(r"at `\$\.?([^`]*)`")
# SGLang's names for the fields whose OpenAI names differ
_OPENAI_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}


class _Body(msgspec.Struct, kw_only=True):
    pass


class FunctionDef(_Body, kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body, kw_only=True):
    type: str = "function"
    function: FunctionDef


class FunctionCall(_Body, kw_only=True):
    name: str
    arguments: str = "{}"


class ToolCall(_Body, kw_only=True):
    id: str
    type: str = "function"
    function: FunctionCall


class ContentPart(_Body, kw_only=True):
    type: str
    text: str | None = None


class Message(_Body, kw_only=True):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined by newlines)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(part.text or "" for part in self.content)


class NamedFunction(_Body, kw_only=True):
    name: str


class NamedToolChoice(_Body, kw_only=True):
    type: str = "function"
    function: NamedFunction


class JsonSchemaFormat(_Body, kw_only=True):
    name: str = "response"
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(_Body, kw_only=True):
    type: str
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Body, kw_only=True):
    include_usage: bool | None = None


class _Sampling(_Body, kw_only=True):
    """The fields /v1/chat/completions and /v1/completions share."""

    model: str | None = None  # missing: the served model (as SGLang does)
    max_tokens: Int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: Int | None = None
    stop: str | list[str] | None = None
    seed: Int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    top_k: Int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: Int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[Int] | None = None
    regex: str | None = None
    cache_salt: str | None = None  # vLLM's field: a cache namespace (see runtime/server/tenants.py)
    pin_s: float | None = None  # keep the prompt cached this long after the request (radixrt)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling, kw_only=True):
    messages: list[Message]
    max_completion_tokens: Int | None = None
    logprobs: bool | None = None
    top_logprobs: Int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: str | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Sampling, kw_only=True):
    prompt: Any = None  # str | list[str] | list[int] | list[list[int]], checked by prompts()
    echo: bool | None = None
    logprobs: Int | None = None
    best_of: Int | None = None


def parse_chat(body: Any) -> ChatRequest:
    """A /v1/chat/completions body, checked; raises InvalidRequest naming the field."""
    req = _convert(body, ChatRequest)
    check_messages(req.messages)
    _check_common(req)
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidRequest(f"top_logprobs must be in 0..{MAX_TOP_LOGPROBS}", "top_logprobs")
    if req.top_logprobs and not req.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs: true", "top_logprobs")
    if req.max_completion_tokens is not None and req.max_completion_tokens < 1:
        raise InvalidRequest("max_completion_tokens must be at least 1", "max_completion_tokens")
    check_tools(req)
    check_response_format(req)
    return req


def parse_completion(body: Any) -> CompletionRequest:
    """A /v1/completions body, checked; raises InvalidRequest naming the field."""
    req = _convert(body, CompletionRequest)
    _check_common(req)
    if req.logprobs is not None and not 0 <= req.logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidRequest(f"logprobs must be in 0..{MAX_TOP_LOGPROBS}", "logprobs")
    if req.best_of not in (None, 1, req.n or 1):
        raise InvalidRequest("best_of other than n is not supported", "best_of")
    prompts(req)
    return req


def _convert(body: Any, tp: type[Any]) -> Any:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False, "", [], {}):
            raise InvalidRequest(f"{name} is not supported by radixrt", name)
    try:
        return msgspec.convert(body, tp)
    except msgspec.ValidationError as e:
        missing = re.search(r"missing required field `(\w+)`", str(e))
        at = _PATH.search(str(e))
        param = missing.group(1) if missing else at.group(1) if at and at.group(1) else None
        raise InvalidRequest(f"invalid request: {e}", param) from None


def _check_common(req: _Sampling) -> None:
    if req.max_tokens is not None and req.max_tokens < 1:
        raise InvalidRequest("max_tokens must be at least 1", "max_tokens")
    if req.temperature is not None and not 0.0 <= req.temperature <= 2.0:
        raise InvalidRequest("temperature must be in [0, 2]", "temperature")
    if req.n is not None and not 1 <= req.n <= 128:
        raise InvalidRequest("n must be in 1..128", "n")


def check_messages(messages: list[Message]) -> None:
    """Each message well formed, system messages first, every tool message answering a call just made."""
    if not messages:
        raise InvalidRequest("messages must not be empty", "messages")
    open_calls: set[str] | None = None  # ids of the last assistant's calls, while tool answers may follow
    seen_other = False
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        _check_message(m, where)
        if m.role in SYSTEM_ROLES and seen_other:
            raise InvalidRequest(f"{where}: {m.role} messages must come before all others", f"{where}.role")
        seen_other = seen_other or m.role not in SYSTEM_ROLES
        if m.role == "tool":
            _check_answer(m, open_calls, where)
        else:
            open_calls = {c.id for c in m.tool_calls} if m.role == "assistant" and m.tool_calls else None


def _check_message(m: Message, where: str) -> None:
    if m.role not in ROLES:
        raise InvalidRequest(f"{where}.role must be one of {ROLES}, got {m.role!r}", f"{where}.role")
    parts = m.content if isinstance(m.content, list) else []
    if any(part.type != "text" or part.text is None for part in parts):
        raise InvalidRequest(f"{where}: only text content parts are supported", f"{where}.content")
    if m.role == "assistant" and m.content is None and not m.tool_calls:
        raise InvalidRequest(f"{where}: an assistant message needs content or tool_calls", f"{where}.content")
    if m.role in ("user", *SYSTEM_ROLES) and m.content is None:
        raise InvalidRequest(f"{where}.content is required for role {m.role}", f"{where}.content")


def _check_answer(m: Message, open_calls: set[str] | None, where: str) -> None:
    if open_calls is None:
        message = f"{where}: a tool message must follow an assistant message with tool_calls"
        raise InvalidRequest(message, f"{where}.role")
    if m.tool_call_id is not None and m.tool_call_id not in open_calls:
        message = f"{where}.tool_call_id {m.tool_call_id!r} answers no call of the assistant before it"
        raise InvalidRequest(message, f"{where}.tool_call_id")


def check_tools(req: ChatRequest) -> None:
    names = [t.function.name for t in req.tools or []]
    if any(t.type != "function" for t in req.tools or []):
        raise InvalidRequest("only tools of type 'function' are supported", "tools")
    if len(set(names)) != len(names):
        raise InvalidRequest("tool function names must be unique", "tools")
    choice = req.tool_choice
    if isinstance(choice, str) and choice not in TOOL_CHOICES:
        raise InvalidRequest(f"tool_choice must be one of {TOOL_CHOICES} or a named function", "tool_choice")
    if choice not in (None, "none") and not names:
        raise InvalidRequest("tool_choice needs tools", "tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidRequest(f"tool_choice names {choice.function.name!r}, which is not among the tools", "tool_choice")


def check_response_format(req: ChatRequest) -> None:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return
    if fmt.type not in ("json_object", "json_schema"):
        raise InvalidRequest("response_format.type must be text, json_object or json_schema", "response_format")
    if fmt.type == "json_schema" and (fmt.json_schema is None or fmt.json_schema.schema is None):
        raise InvalidRequest("response_format json_schema needs json_schema.schema", "response_format")
    if uses_tools(req):
        raise InvalidRequest("response_format cannot be combined with tools unless tool_choice is none",
                             "response_format")  # fmt: skip
    if req.regex is not None:
        raise InvalidRequest("regex and response_format cannot be combined", "regex")


def uses_tools(req: ChatRequest) -> bool:
    """Whether the model may (or must) call a tool in this request."""
    return bool(req.tools) and req.tool_choice != "none"


def prompts(req: CompletionRequest) -> list[str | list[int]]:
    """The prompts of a /v1/completions body: texts or token-id lists."""
    p = req.prompt
    if isinstance(p, str):
        return [p]
    ok = isinstance(p, list) and p and (
        all(isinstance(x, str) for x in p)
        or all(type(x) is int for x in p)
        or all(isinstance(x, list) and x and all(type(t) is int for t in x) for x in p)
    )  # fmt: skip
    if not ok:
        raise InvalidRequest("prompt must be a string, a list of strings, a token list or a list of token lists",
                             "prompt")  # fmt: skip
    return [p] if type(p[0]) is int else list(p)


def sampling_params(req: _Sampling, max_tokens: int | None, limit: int) -> SamplingParams:
    """The request's SamplingParams (n is handled by the caller: one request per choice)."""
    fields = {
        "max_new_tokens": limit if max_tokens is None else max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "seed": req.seed,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "stop": [req.stop] if isinstance(req.stop, str) else req.stop,
        "top_k": req.top_k,
        "min_p": req.min_p,
        "repetition_penalty": req.repetition_penalty,
        "min_new_tokens": req.min_tokens,
        "ignore_eos": req.ignore_eos,
        "stop_token_ids": req.stop_token_ids,
        "regex": req.regex,
    }
    params = SamplingParams(**{k: v for k, v in fields.items() if v is not None})
    try:
        params.verify(limit)
    except InvalidRequest as e:
        name = _OPENAI_NAMES.get(e.param or "", e.param)
        raise InvalidRequest(str(e).replace(e.param or "", name or ""), name) from None
    return params


def chat_grammar(req: ChatRequest) -> dict[str, str]:
    """The SamplingParams grammar field for the response_format (empty for text)."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return {}
    if fmt.type == "json_object":
        return {"json_schema": json.dumps({"type": "object"})}
    assert fmt.json_schema is not None and fmt.json_schema.schema is not None
    return {"json_schema": json.dumps(fmt.json_schema.schema)}
