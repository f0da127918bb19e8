"""What every HTTP route shares: its limits, reading a JSON body, JSON answers and the error shape.

A leaf module: the native routes (`app.py`) and the OpenAI routes (`openai/router.py`) both read
their limits from the `HttpOptions` that `create_app` stores in `app.state.http_options`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import msgspec
from fastapi import Request
from fastapi.responses import Response

from radixrt.errors import BodyTimeout, BodyTooLarge, InvalidRequest, error_class
from radixrt.runtime.config import ServerArgs

RETRY_AFTER_S = "1"


@dataclasses.dataclass(frozen=True)
class HttpOptions:
    max_body_bytes: int = 8 << 20
    max_prompts: int = 256  # prompts in one /generate list
    client_timeout: float = 60.0  # a client may stall this long sending its body or reading a stream
    health_timeout: float = 10.0  # seconds the worker may take to answer between two steps
    control_timeout: float = 60.0
    disconnect_poll: float = 0.5

    @classmethod
    def from_args(cls, args: ServerArgs) -> HttpOptions:
        return cls(args.max_body_bytes, args.max_prompts_per_request, args.client_timeout)


def http_options(request: Request) -> HttpOptions:
    return request.app.state.http_options


def bearer_key(request: Request) -> str | None:
    """The API key a request authenticated with (ApiKeyGuard checked it); its tenant's cache salt."""
    auth = request.headers.get("authorization", "")
    return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None


async def read_json(request: Request, opts: HttpOptions) -> Any:
    """The JSON body: at most `opts.max_body_bytes`, received within `opts.client_timeout` seconds."""
    limit = opts.max_body_bytes

    async def read() -> bytes:
        size, parts = 0, []
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise BodyTooLarge(f"the request body exceeds {limit} bytes")
            parts.append(part)
        return b"".join(parts)

    try:
        body = await asyncio.wait_for(read(), opts.client_timeout)
    except asyncio.TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {opts.client_timeout:g}s") from None
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise InvalidRequest(f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidRequest("the body is nested too deeply") from None


def json_response(content: Any, status_code: int = 200) -> Response:
    """msgspec encodes -inf logprobs as null, where json.dumps(allow_nan=False) would fail."""
    headers = {"Retry-After": RETRY_AFTER_S} if status_code == 503 else None
    return Response(msgspec.json.encode(content), status_code=status_code, media_type="application/json",
                    headers=headers)  # fmt: skip


def error_json(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The error body of every HTTP endpoint (OpenAI's shape)."""
    return {"error": {"message": message, "type": _error_type(status), "param": param, "code": status}}


def _error_type(status: int) -> str:
    """The `kind` of the exception class that stands for `status` (radixrt.errors)."""
    return error_class(status).kind
