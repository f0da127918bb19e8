"""RuntimeEndpoint("http://...") against a fake SGLang-style `/generate` server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import radixrt.lang as rl
from radixrt.errors import InvalidRequest

from .fake_server import SMOL_TEMPLATE


def answer(text: str, body: dict) -> dict:
    """Reply `<len>`; input logprobs -(ord(c) - ord('a')) / 10 for tokens from logprob_start_len."""
    out = "" if body["sampling_params"].get("max_new_tokens") == 0 else f"<{len(text)}>"
    meta = {"prompt_tokens": len(text), "cached_tokens": 0, "completion_tokens": len(out)}
    if body.get("return_logprob"):
        start = max(body.get("logprob_start_len", 0), 0)
        meta["input_token_logprobs"] = [
            [None if i == 0 else -(ord(c) - ord("a")) / 10, ord(c), None] for i, c in enumerate(text) if i >= start
        ]
    return {"text": out, "meta_info": meta}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, data: object) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self.server.log.append((self.path, None, self.headers.get("Authorization")))
        self._reply(200, {"model_path": "fake", "chat_template": SMOL_TEMPLATE, "eos_token": "<|im_end|>"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"null")
        self.server.log.append((self.path, body, self.headers.get("Authorization")))
        if self.path != "/generate":
            return self._reply(200, {})
        texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
        if any("BOOM" in t for t in texts):
            return self._reply(400, {"error": {"message": "prompt rejected", "param": "text"}})
        if body.get("stream"):
            return self._stream(answer(texts[0], body))
        outs = [answer(t, body) for t in texts]
        self._reply(200, outs if isinstance(body["text"], list) else outs[0])

    def _stream(self, out: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(1, len(out["text"]) + 1):  # SGLang streams the cumulative text
            event = {"text": out["text"][:i], "meta_info": out["meta_info"]}
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def http_backend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.log = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    backend = rl.RuntimeEndpoint(f"http://127.0.0.1:{server.server_address[1]}", api_key="secret", timeout=10)
    yield backend, server.log
    server.shutdown()
    server.server_close()


@rl.function
def prog(s):
    s += rl.user("Q")
    s += rl.assistant(rl.gen("a", max_tokens=5, return_logprob=True, logprob_start_len=0))
    s += "Pick: " + rl.select("c", choices=["b", "a", "c"])


def test_gen_and_select_over_sglang_http(http_backend):
    backend, log = http_backend
    state = prog.run(backend=backend)
    assert state["c"] == "a"  # the choice the fake server scores highest
    assert state.get_meta_info("c")["token_logprobs"] == [[-0.1], [0.0], [-0.2]]
    paths = [path for path, _, _ in log]
    assert paths == ["/get_model_info", "/generate", "/generate", "/generate"]
    gen_body = log[1][1]
    assert gen_body["sampling_params"] == {"max_new_tokens": 5}
    assert (gen_body["return_logprob"], gen_body["logprob_start_len"]) == (True, 0)
    assert state["a"] == f"<{len(gen_body['text'])}>"
    prefill, scored = log[2][1], log[3][1]
    assert prefill["sampling_params"] == {"max_new_tokens": 0}
    prefix = prefill["text"]
    assert scored["text"] == [prefix] + [prefix + c for c in ("b", "a", "c")]
    assert scored["logprob_start_len"] == len(prefix) - 1  # from the prefix's last token on
    assert all(auth == "Bearer secret" for _, _, auth in log)


def test_stream_over_http_turns_cumulative_text_into_pieces(http_backend):
    backend, _ = http_backend
    state = prog.run(backend=backend, stream=True)
    pieces = list(state.text_iter("a"))
    assert "".join(pieces) == state["a"] and state["a"].startswith("<")


def test_http_error_raises_with_the_server_message(http_backend):
    backend, _ = http_backend

    @rl.function
    def bad(s):
        s += "BOOM" + rl.gen("x")

    with pytest.raises(InvalidRequest, match="prompt rejected") as info:
        bad.run(backend=backend)
    assert info.value.status == 400 and info.value.param == "text"


def test_a_continuation_merged_into_the_prefix_last_token_keeps_that_token():
    from radixrt.lang.backends.http_client import _continuation_score

    space = ord(" ")
    kept_apart = {"input_token_logprobs": [[-0.5, space, None], [-0.1, 7, None]], "prompt_tokens": 9}
    merged = {"input_token_logprobs": [[-0.7, 900, None]], "prompt_tokens": 8}  # " yes" as one token
    assert _continuation_score(kept_apart, space).logprobs == [-0.1]
    assert _continuation_score(merged, space).token_ids == [900]
