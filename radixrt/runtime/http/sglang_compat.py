"""Routes that only SGLang's frontend client (`sglang.RuntimeEndpoint`) calls.

`/concate_and_append_request`: `fork(...).join(mode="concate_and_append")` posts
`{"src_rids": [...], "dst_rid": ...}` after it has appended the branches' text to the parent's
and sent each branch's text as a prefill-only `/generate`. It asks the server to glue the
branches' KV onto the parent's. radixrt keeps KV only in its radix tree, keyed by text, so the
parent's next request already reuses its cached prefix: there is nothing to do but to answer 200
(the client raises on anything else, and a failed join leaves its program waiting forever).
The rids are SGLang's own state ids, which its client never sends with `/generate`, so every
well-formed rid is unknown to the server and none can be refused for that; malformed bodies are.

`/start_profile`, `/stop_profile`: radixrt has no profiler; a clear error instead of a bare 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from radixrt.errors import InvalidRequest
from radixrt.runtime.http.common import error_json, http_options, json_response, read_json

MAX_RID_CHARS = 256
NOT_IMPLEMENTED = 501

sglang_compat_router = APIRouter()


@sglang_compat_router.post("/concate_and_append_request")
async def concate_and_append(request: Request) -> Response:
    opts = http_options(request)
    src_rids, dst_rid = parse_concate_and_append(await read_json(request, opts), opts.max_prompts)
    message = f"{len(src_rids)} branches joined into {dst_rid}: the radix cache serves their KV by prefix"
    return json_response({"success": True, "message": message})


@sglang_compat_router.api_route("/start_profile", methods=["GET", "POST"])
@sglang_compat_router.api_route("/stop_profile", methods=["GET", "POST"])
async def profile() -> Response:
    message = "radixrt has no profiler; /stats and /metrics report its counters"
    return json_response(error_json(NOT_IMPLEMENTED, message), status_code=NOT_IMPLEMENTED)


def parse_concate_and_append(body: Any, max_sources: int) -> tuple[list[str], str]:
    """(src_rids, dst_rid) of a `/concate_and_append_request` body; InvalidRequest names the bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object {"src_rids": [...], "dst_rid": "..."}')
    src_rids, dst_rid = body.get("src_rids"), body.get("dst_rid")
    if not isinstance(src_rids, list) or not src_rids:
        raise InvalidRequest("src_rids must be a non-empty list of request ids", "src_rids")
    if len(src_rids) > max_sources:
        raise InvalidRequest(f"{len(src_rids)} src_rids; the limit is {max_sources}", "src_rids")
    for rid in src_rids:
        _check_rid(rid, "src_rids", "src_rids must hold non-empty strings")
    _check_rid(dst_rid, "dst_rid", "dst_rid must be a non-empty string")
    if len(set(src_rids)) != len(src_rids):
        raise InvalidRequest("src_rids names a request more than once", "src_rids")
    if dst_rid in src_rids:
        raise InvalidRequest(f"dst_rid {dst_rid!r} is also one of src_rids", "dst_rid")
    return src_rids, dst_rid


def _check_rid(rid: Any, field: str, expected: str) -> None:
    if not isinstance(rid, str) or not rid:
        raise InvalidRequest(f"{expected}; got {type(rid).__name__} {rid!r:.60}", field)
    if len(rid) > MAX_RID_CHARS:
        raise InvalidRequest(f"a request id in {field} is {len(rid)} characters; the limit is {MAX_RID_CHARS}", field)
