"""One mapping from a server status back to its exception, shared by the Engine, the DSL clients
and the HTTP error bodies."""

from __future__ import annotations

import pytest

from radixrt.errors import (
    BodyTimeout,
    BodyTooLarge,
    Forbidden,
    InternalError,
    InvalidRequest,
    Overloaded,
    TooManyRequests,
    Unauthorized,
    error_for_status,
)
from radixrt.lang.backends.client import error_from_reply
from radixrt.runtime import engine
from radixrt.runtime.http.common import error_json
from radixrt.runtime.protocol import ErrorReply

SENT_BY_THE_SERVER = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    408: BodyTimeout,
    413: BodyTooLarge,
    429: TooManyRequests,
    500: InternalError,
    503: Overloaded,
}


@pytest.mark.parametrize(("status", "cls"), sorted(SENT_BY_THE_SERVER.items()))
def test_each_status_the_server_sends_maps_to_its_class_with_message_and_param(status, cls):
    err = error_for_status(status, "what went wrong", "top_p")
    assert type(err) is cls and err.status == status == cls.status
    assert str(err) == "what went wrong" and err.param == "top_p"


@pytest.mark.parametrize(("status", "cls"), [(404, InvalidRequest), (422, InvalidRequest), (502, InternalError)])
def test_other_statuses_map_by_their_class_and_keep_the_exact_status(status, cls):
    err = error_for_status(status, "odd")
    assert type(err) is cls and err.status == status


def test_status_is_per_instance_and_leaves_the_class_alone():
    assert error_for_status(404, "gone").status == 404
    assert InvalidRequest.status == 400


@pytest.mark.parametrize("status", [*SENT_BY_THE_SERVER, 404, 502])
def test_the_engine_and_the_dsl_client_raise_the_same_error_for_a_reply(status):
    reply = ErrorReply(rid="r", status=status, message="m", param="p")
    from_engine, from_client = engine._error(reply), error_from_reply(reply)
    assert type(from_engine) is type(from_client) is type(error_for_status(status, "m"))
    assert (from_engine.status, str(from_engine), from_engine.param) == (status, "m", "p")
    assert (from_client.status, str(from_client), from_client.param) == (status, "m", "p")


@pytest.mark.parametrize("status", [*SENT_BY_THE_SERVER, 404, 502])
def test_the_http_error_type_is_the_exception_kind(status):
    assert error_json(status, "m")["error"]["type"] == error_for_status(status, "m").kind


def test_kinds_are_openai_error_types():
    assert error_json(429, "slow down")["error"]["type"] == "rate_limit_error"
    assert error_json(413, "big")["error"]["type"] == "invalid_request_error"
    assert error_json(403, "no")["error"]["type"] == "permission_error"
    assert error_json(500, "boom")["error"]["type"] == "internal_error"
