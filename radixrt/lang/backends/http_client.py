"""The same client interface as `RuntimeClient`, over SGLang's native HTTP API (`POST /generate`).

Requests and replies are protocol messages, translated to and from SGLang's JSON: `text`,
`sampling_params`, `return_logprob`, `logprob_start_len`, list input, SSE streaming with
cumulative text. Only the standard library is used.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgspec

from radixrt.errors import Overloaded
from radixrt.lang.backends.base import current_program
from radixrt.lang.backends.client import error_from_reply
from radixrt.runtime import protocol
from radixrt.runtime.protocol import (
    Ack,
    ContinuationScore,
    ErrorReply,
    GenerateChunk,
    GenerateRequest,
    GenerateResult,
    ModelInfo,
    ScoreResult,
    StatsReply,
)

logger = logging.getLogger(__name__)


class HttpClient:
    """Talks to `base_url` (http://host:port). Thread-safe: each call is its own HTTP request."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float | None = None):
        self.base_url, self.api_key, self.timeout = base_url.rstrip("/"), api_key, timeout
        host = urllib.parse.urlsplit(self.base_url).hostname
        # NOTE: a local server is never reached through an http_proxy from the environment
        local = host in ("localhost", "127.0.0.1", "::1")
        proxies = urllib.request.ProxyHandler({}) if local else urllib.request.ProxyHandler()
        self._opener = urllib.request.build_opener(proxies)

    def call(self, msg: protocol.ClientMsg, timeout: float | None = None) -> protocol.ServerMsg:
        rid = getattr(msg, "rid", "")
        if isinstance(msg, GenerateRequest):
            out = self._post("/generate", _generate_body(msg), rid, timeout)
            ids = out.get("output_ids", [])
            return GenerateResult(rid=rid, text=out["text"], output_ids=ids, meta_info=out["meta_info"])
        if isinstance(msg, protocol.ScoreRequest):
            return self._score(msg, timeout)
        if isinstance(msg, protocol.GetModelInfo):
            return _model_info(self._request("GET", "/get_model_info", None, rid, timeout))
        if isinstance(msg, protocol.FlushCache):
            self._request("POST", "/flush_cache", None, rid, timeout, parse=False)
            return Ack()
        if isinstance(msg, protocol.GetStats):
            return StatsReply(stats=self._request("GET", "/get_server_info", None, rid, timeout))
        raise TypeError(f"HttpClient cannot send {type(msg).__name__}")

    def stream(self, msg: GenerateRequest, timeout: float | None = None) -> Iterator[protocol.ServerMsg]:
        """GenerateChunks (new text only) then a GenerateResult with the full text."""
        body = _generate_body(msg) | {"stream": True}
        text, out = "", {"text": "", "meta_info": {}}
        with self._open("POST", "/generate", body, msg.rid, timeout) as response:
            for event in _sse_events(response):
                out = event
                # cumulative text (SGLang) or, from other servers, only the new piece
                new = event["text"].removeprefix(text) if event["text"].startswith(text) else event["text"]
                text += new
                if new:
                    yield GenerateChunk(rid=msg.rid, text=new, output_ids=[], meta_info=event.get("meta_info", {}))
        yield GenerateResult(rid=msg.rid, text=text, output_ids=out.get("output_ids", []), meta_info=out["meta_info"])

    def abort(self, rid: str) -> None:
        try:
            self._request("POST", "/abort_request", {"rid": rid}, rid, 5, parse=False)
        except Exception as e:  # noqa: BLE001 - best effort: the request may be finished already
            logger.debug("abort of %s failed: %s", rid, e)

    def close(self) -> None:
        pass

    # ---- select: one prefix commit, then all continuations in one list request -------------

    def _score(self, msg: protocol.ScoreRequest, timeout: float | None) -> ScoreResult:
        """Scores from SGLang-style input logprobs, starting at the prefix's last token.

        The prefix is sent along in the list: its last token id tells, per continuation,
        whether that position still holds the prefix's token (skipped) or a token merged with
        the continuation's start, e.g. " yes" after a prefix ending in a space (kept).
        """
        texts, start = list(msg.continuations), 0
        salt = {} if msg.cache_salt is None else {"cache_salt": msg.cache_salt}
        if msg.prefix:
            prefill = {"text": msg.prefix, "sampling_params": {"max_new_tokens": 0}, **salt}
            prefix_len = self._post("/generate", prefill, msg.rid, timeout)["meta_info"]["prompt_tokens"]
            texts, start = [msg.prefix] + [msg.prefix + c for c in texts], max(prefix_len - 1, 0)
        body = {
            "text": texts,
            "sampling_params": {"max_new_tokens": 0},
            "return_logprob": True,
            "logprob_start_len": start,
            **salt,
        }
        metas = [o["meta_info"] for o in self._post("/generate", body, msg.rid, timeout)]
        boundary = None
        if msg.prefix:
            boundary, metas = _entries(metas[0])[0][1], metas[1:]
        return ScoreResult(rid=msg.rid, scores=[_continuation_score(m, boundary) for m in metas])

    # ---- plumbing --------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any], rid: str, timeout: float | None) -> Any:
        return self._request("POST", path, body, rid, timeout)

    def _request(self, method: str, path: str, body: Any, rid: str, timeout: float | None, parse: bool = True) -> Any:
        with self._open(method, path, body, rid, timeout) as response:
            data = response.read()
        return json.loads(data) if parse else None

    def _open(self, method: str, path: str, body: Any, rid: str, timeout: float | None):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if program := current_program():
            headers["X-Radixrt-Program"] = program  # a cluster keeps a program's requests on one replica
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            return self._opener.open(request, timeout=self.timeout if timeout is None else timeout)
        except urllib.error.HTTPError as e:
            raise error_from_reply(_error_reply(rid, e.code, e.read())) from None
        except urllib.error.URLError as e:
            raise Overloaded(f"cannot reach {self.base_url}: {e.reason}") from None


def _generate_body(msg: GenerateRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "rid": msg.rid,
        "sampling_params": msgspec.to_builtins(msg.sampling),
        "return_logprob": msg.return_logprob,
        "logprob_start_len": msg.logprob_start_len,
        "top_logprobs_num": msg.top_logprobs_num,
    }
    if msg.input_ids is not None:
        body["input_ids"] = msg.input_ids
    else:
        body["text"] = msg.text
    if msg.cache_salt is not None:
        body["cache_salt"] = msg.cache_salt
    if msg.pin_s is not None:
        body["pin_s"] = msg.pin_s
    return body


def _sse_events(response) -> Iterator[dict[str, Any]]:
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            return
        event = json.loads(payload)
        if "error" in event:
            raise error_from_reply(_error_reply("", event["error"].get("code", 500), json.dumps(event).encode()))
        yield event


def _error_reply(rid: str, status: int, body: bytes) -> ErrorReply:
    """Read FastAPI's `{"detail": ...}`, OpenAI's `{"error": {...}}` or plain text."""
    try:
        data = json.loads(body)
    except ValueError:
        return ErrorReply(rid=rid, status=status, message=body.decode(errors="replace") or f"HTTP {status}")
    error = data.get("error", data) if isinstance(data, dict) else {}
    if isinstance(error, str):
        return ErrorReply(rid=rid, status=status, message=error)
    message = error.get("message") or error.get("detail") or json.dumps(data)
    return ErrorReply(rid=rid, status=status, message=str(message), param=error.get("param"))


def _entries(meta: dict[str, Any]) -> list[list[Any]]:
    """SGLang shape: input_token_logprobs = [[logprob | None, token_id, text | None], ...]."""
    return meta.get("input_token_logprobs") or []


def _continuation_score(meta: dict[str, Any], boundary: int | None) -> ContinuationScore:
    entries = _entries(meta)
    if boundary is not None and entries and entries[0][1] == boundary:
        entries = entries[1:]  # the prefix's own last token, unchanged by the continuation
    pairs = [(lp, tid) for lp, tid, *_ in entries if lp is not None]
    return ContinuationScore(
        token_ids=[t for _, t in pairs],
        logprobs=[lp for lp, _ in pairs],
        prompt_tokens=meta.get("prompt_tokens", 0),
        cached_tokens=meta.get("cached_tokens", 0),
    )


def _model_info(data: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        model_path=data.get("model_path", ""),
        context_length=data.get("context_length", 0),
        vocab_size=data.get("vocab_size", 0),
        chat_template=data.get("chat_template"),
        bos_token=data.get("bos_token"),
        eos_token=data.get("eos_token"),
    )
