"""Errors as values with a status: raised where detected, translated once at the API edge.

`error_for_status` is the one way back from a status (an ErrorReply, an HTTP answer) to the
exception it stands for; `kind` is the `type` field of the HTTP error body.
"""

from __future__ import annotations


class RadixRTError(Exception):
    """Base class. `status` is the HTTP status the API edge answers with; `param` names the
    request field at fault, if any."""

    status = 500
    kind = "internal_error"

    def __init__(self, message: str = "", param: str | None = None):
        super().__init__(message)
        self.param = param


class InvalidRequest(RadixRTError):
    """The request itself is wrong (bad parameter, prompt too long, bad grammar)."""

    status = 400
    kind = "invalid_request_error"


class Unauthorized(RadixRTError):
    status = 401
    kind = "authentication_error"


class Forbidden(Unauthorized):
    """The client may not use this endpoint (e.g. `/debug/cache` from another host without an API key)."""

    status = 403
    kind = "permission_error"


class BodyTimeout(InvalidRequest):
    """An HTTP client sent its body too slowly."""

    status = 408


class BodyTooLarge(InvalidRequest):
    status = 413


class TooManyRequests(RadixRTError):
    """One ZMQ connection has too many requests in flight."""

    status = 429
    kind = "rate_limit_error"


class InternalError(RadixRTError):
    """The server failed (a worker error, a model forward that raised); not the request's fault."""


class Overloaded(RadixRTError):
    """The server cannot take the request now (queue full, worker down)."""

    status = 503
    kind = "overloaded_error"


_BY_STATUS: dict[int, type[RadixRTError]] = {
    cls.status: cls
    for cls in (InvalidRequest, Unauthorized, Forbidden, BodyTimeout, BodyTooLarge, TooManyRequests, InternalError,
                Overloaded)
}  # fmt: skip


def error_class(status: int) -> type[RadixRTError]:
    """The exception class of an HTTP status; another 4xx is an InvalidRequest, another 5xx an InternalError."""
    default = InvalidRequest if 400 <= status < 500 else InternalError
    return _BY_STATUS.get(status, default)


def error_for_status(status: int, message: str, param: str | None = None) -> RadixRTError:
    """The exception a server error (an ErrorReply, an HTTP error answer) stands for, with its
    message, param and exact status."""
    err = error_class(status)(message, param)
    err.status = status
    return err
