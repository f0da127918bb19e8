"""Errors as values with a status: raised where detected, translated once at the API edge."""

from __future__ import annotations


class RadixRTError(Exception):
    """Base class. `status` is the HTTP status the API edge answers with."""

    status = 500
    kind = "internal_error"


class InvalidRequest(RadixRTError):
    """The request itself is wrong (bad parameter, prompt too long, bad grammar)."""

    status = 400
    kind = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class Unauthorized(RadixRTError):
    status = 401
    kind = "authentication_error"


class Overloaded(RadixRTError):
    """The server cannot take the request now (queue full, worker down)."""

    status = 503
    kind = "overloaded_error"


class BodyTimeout(RadixRTError):
    """An HTTP client sent its body too slowly."""

    status = 408
    kind = "invalid_request_error"


class BodyTooLarge(RadixRTError):
    status = 413
    kind = "invalid_request_error"


class TooManyRequests(RadixRTError):
    """One ZMQ connection has too many requests in flight."""

    status = 429
    kind = "rate_limit_error"
