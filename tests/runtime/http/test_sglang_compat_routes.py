"""The routes only SGLang's frontend client calls, on the ASGI app over a fake Frontend:
`/concate_and_append_request` answers SGLang's body with 200 and every malformed body with a 400
naming the field; `/server_info` is `/get_server_info`; the profiler routes say radixrt has none."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from radixrt.runtime.config import ServerArgs
from radixrt.runtime.http.app import create_app
from radixrt.runtime.http.common import HttpOptions
from radixrt.runtime.http.sglang_compat import MAX_RID_CHARS
from tests.runtime.http.fake_frontend import FakeFrontend

MAX_SOURCES = 4


def client(api_key: str | None = None) -> tuple[TestClient, FakeFrontend]:
    frontend = FakeFrontend()
    args = ServerArgs(model="default", api_key=api_key)
    app = create_app(frontend, args, HttpOptions(max_prompts=MAX_SOURCES))  # type: ignore[arg-type]
    return TestClient(app), frontend


def sid() -> str:
    return uuid.uuid4().hex  # what SGLang's StreamExecutor uses as its id


def test_sglangs_join_request_is_answered_with_success():
    http, frontend = client()
    answer = http.post("/concate_and_append_request", json={"src_rids": [sid(), sid(), sid()], "dst_rid": sid()})
    assert answer.status_code == 200, answer.text
    assert answer.json()["success"] is True and "3 branches" in answer.json()["message"]
    assert frontend.metrics.errors == []


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ([["a"], "b"], None, "JSON object"),
        ({"dst_rid": "p"}, "src_rids", "non-empty list"),
        ({"src_rids": [], "dst_rid": "p"}, "src_rids", "non-empty list"),
        ({"src_rids": "a", "dst_rid": "p"}, "src_rids", "non-empty list"),
        ({"src_rids": ["a", 7], "dst_rid": "p"}, "src_rids", "non-empty strings; got int 7"),
        ({"src_rids": ["a", ""], "dst_rid": "p"}, "src_rids", "non-empty strings"),
        ({"src_rids": ["a"]}, "dst_rid", "non-empty string; got NoneType None"),
        ({"src_rids": ["a"], "dst_rid": ["p"]}, "dst_rid", "non-empty string"),
        ({"src_rids": ["a", "b", "a"], "dst_rid": "p"}, "src_rids", "more than once"),
        ({"src_rids": ["a", "p"], "dst_rid": "p"}, "dst_rid", "also one of src_rids"),
        ({"src_rids": list("abcde"), "dst_rid": "p"}, "src_rids", f"5 src_rids; the limit is {MAX_SOURCES}"),
        ({"src_rids": ["a" * (MAX_RID_CHARS + 1)], "dst_rid": "p"}, "src_rids", f"limit is {MAX_RID_CHARS}"),
    ],
)
def test_a_malformed_join_request_is_a_400_naming_the_field(body, param, words):
    http, frontend = client()
    answer = http.post("/concate_and_append_request", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert frontend.metrics.errors == [400]


def test_a_join_request_that_is_not_json_is_a_400():
    http, _ = client()
    answer = http.post(
        "/concate_and_append_request", content=b"{src_rids: [", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]["message"]


def test_the_join_request_needs_the_api_key_like_every_route():
    http, _ = client(api_key="k")
    body = {"src_rids": [sid()], "dst_rid": sid()}
    assert http.post("/concate_and_append_request", json=body).status_code == 401
    answer = http.post("/concate_and_append_request", json=body, headers={"Authorization": "Bearer k"})
    assert answer.status_code == 200


def test_server_info_is_get_server_info_without_the_api_key():
    http, _ = client(api_key="k")
    auth = {"Authorization": "Bearer k"}
    info = http.get("/server_info", headers=auth).json()
    assert info == http.get("/get_server_info", headers=auth).json()
    assert info["model"] == "default" and "api_key" not in info


@pytest.mark.parametrize("path", ["/start_profile", "/stop_profile"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_the_profiler_routes_say_radixrt_has_none(path, method):
    http, _ = client()
    answer = http.request(method, path)
    assert answer.status_code == 501 and "no profiler" in answer.json()["error"]["message"]
