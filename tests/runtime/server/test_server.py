"""`radixrt serve` end to end: HTTP (SGLang's /generate) and ZMQ clients against a real subprocess."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import msgspec
import pytest

import radixrt
from radixrt.runtime import protocol
from radixrt.runtime.protocol import ErrorReply, GenerateResult
from tests.runtime.server_harness import ZmqClient, sse_events, start_server, stats, wait_until, zmq_generate

pytestmark = pytest.mark.slow

GREEDY = {"temperature": 0, "max_new_tokens": 8}
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time,"]
EMOJI_PROMPT = "😀" * 10  # the model continues it; each emoji is 3 byte-level tokens


@pytest.fixture(scope="module")
def reference() -> dict[str, dict[str, Any]]:
    """Greedy outputs of radixrt.Engine in this process, one prompt at a time."""
    engine = radixrt.Engine(model="default", dtype="float32", kv_slots=1024)
    try:
        return {p: engine.generate(p, GREEDY) for p in PROMPTS}
    finally:
        engine.shutdown()


def test_concurrent_plain_and_streaming_requests_match_the_in_process_engine(http, reference):
    def plain(prompt: str) -> tuple[str, list[int]]:
        out = http.post("/generate", json={"text": prompt, "sampling_params": GREEDY}).json()
        return out["text"], out["output_ids"]

    def streamed(prompt: str) -> tuple[str, list[int]]:
        with http.stream("POST", "/generate", json={"text": prompt, "sampling_params": GREEDY, "stream": True}) as r:
            last = sse_events(r)[-1]
        return last["text"], last["output_ids"]

    with ThreadPoolExecutor(6) as pool:
        jobs = [(p, pool.submit(fn, p)) for p in PROMPTS for fn in (plain, streamed)]
        for prompt, job in jobs:
            assert job.result() == (reference[prompt]["text"], reference[prompt]["output_ids"])


def test_streamed_text_grows_by_whole_characters_up_to_the_plain_text(http):
    body = {"text": EMOJI_PROMPT, "sampling_params": {"temperature": 0, "max_new_tokens": 9}}
    plain = http.post("/generate", json=body).json()
    assert any(ord(c) > 0xFFFF for c in plain["text"]), "the prompt should make the model emit emoji"
    with http.stream("POST", "/generate", json={**body, "stream": True}) as r:
        events = sse_events(r)
    texts = [e["text"] for e in events]
    assert all("\ufffd" not in t and plain["text"].startswith(t) for t in texts)
    assert texts[-1] == plain["text"] and events[-1]["output_ids"] == plain["output_ids"]
    assert events[-1]["meta_info"]["finish_reason"]["type"] == "length"


def test_prefill_only_request_caches_the_prompt_and_flush_forgets_it(http):
    prefix = "A shared system prompt that many requests start with, long enough to matter here."
    wait_until(lambda: http.post("/flush_cache").json()["flushed"])
    first = http.post("/generate", json={"text": prefix, "sampling_params": {"max_new_tokens": 0}}).json()
    assert first["text"] == "" and first["meta_info"]["completion_tokens"] == 0
    follow = {"text": prefix + " And a question.", "sampling_params": {"max_new_tokens": 1}}
    hit = http.post("/generate", json=follow).json()["meta_info"]
    assert hit["cached_tokens"] >= first["meta_info"]["prompt_tokens"] - 1 > 0
    assert http.post("/flush_cache").json() == {"flushed": True}
    assert http.post("/generate", json=follow).json()["meta_info"]["cached_tokens"] == 0


def test_list_input_gives_a_list_and_null_sglang_fields_mean_default(http, reference):
    sglang_body = {  # the shape SGLang's RuntimeEndpoint sends, nulls included
        "text": PROMPTS[:2],
        "sampling_params": {
            "skip_special_tokens": True,
            "spaces_between_special_tokens": True,
            "max_new_tokens": 8,
            "min_new_tokens": None,
            "n": 1,
            "stop": [],
            "stop_token_ids": None,
            "stop_regex": None,
            "temperature": 0,
            "top_p": None,
            "top_k": None,
            "min_p": None,
            "frequency_penalty": None,
            "presence_penalty": None,
            "ignore_eos": False,
            "regex": None,
            "json_schema": None,
        },
        "return_logprob": None,
        "logprob_start_len": None,
        "top_logprobs_num": None,
        "return_text_in_logprobs": True,
        "rid": None,
        "stream": False,
        "image_data": None,
    }
    answer = http.post("/generate", json=sglang_body)
    assert answer.status_code == 200, answer.text
    assert [r["text"] for r in answer.json()] == [reference[p]["text"] for p in PROMPTS[:2]]
    ids = http.post(
        "/generate", json={"input_ids": [reference[PROMPTS[0]]["output_ids"][:3]], "sampling_params": GREEDY}
    )
    assert isinstance(ids.json(), list) and len(ids.json()) == 1


def test_logprobs_come_as_sglang_triples(http):
    body = {
        "text": PROMPTS[0],
        "sampling_params": {**GREEDY, "max_new_tokens": 3},
        "return_logprob": True,
        "logprob_start_len": 0,
        "top_logprobs_num": 2,
        "rid": "mine",
    }
    meta = http.post("/generate", json=body).json()["meta_info"]
    assert meta["id"] == "mine"
    out = meta["output_token_logprobs"]
    assert len(out) == 3 and all(lp <= 0 and isinstance(t, int) and isinstance(s, str) for lp, t, s in out)
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"]
    assert all(len(row) == 2 for row in meta["output_top_logprobs"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"text": "hi", "sampling_params": {"temperature": -1}}, "temperature"),
        ({"text": "hi", "sampling_params": {"top_p": "high"}}, "top_p"),
        ({"text": "hi", "sampling_params": {"stop_regex": "x+"}}, "stop_regex"),
        ({"text": 5}, "text"),
        ({"input_ids": [1, 2], "text": "hi"}, "text"),
        ({"text": "hi", "top_logprobs_num": 500, "return_logprob": True}, "top_logprobs_num"),
    ],
)
def test_invalid_requests_get_400_naming_the_field(http, body, param):
    answer = http.post("/generate", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_malformed_and_oversized_bodies_are_rejected(http):
    assert http.post("/generate", content=b"{not json").status_code == 400
    assert http.post("/generate", content=b"x" * (9 << 20)).status_code == 413
    assert http.get("/health").status_code == 200


def test_stats_name_what_runs_each_op_in_the_worker(http):
    import torch

    from radixrt.workers.layers import cpu_kernels

    if torch.cuda.is_available():
        pytest.skip("the server runs on CUDA here: no CPU kernels")
    built = "cpu_kernels" if cpu_kernels.load() is not None else "torch"  # the worker shares this kernel cache
    kernels = stats(http)["kernels"]
    assert "batch-invariant: " in kernels.pop("linear")  # the measured choice per linear shape
    # with the kernels, decode and prefill (float32: its prompt rows through decode_attention) run what
    # measured faster here, e.g. "cpu_kernels (measured 3.71x faster)"
    for op in ("decode_attention", "extend_attention"):
        used = kernels.pop(op)
        measured = used.startswith(("cpu_kernels (measured ", "torch (measured "))
        assert measured if built == "cpu_kernels" else used == "torch"
    assert kernels == {  # the embedded model in float32 on CPU
        "shared_prefix_decode": "off",
        "rms_norm": built,
        "silu_and_mul": built,
        "rotary": built,
        "decode_layer": "cpu_kernels" if built == "cpu_kernels" else "off",
    }


def test_disconnecting_a_stream_aborts_it_and_frees_its_slots(http):
    aborted = stats(http)["requests_aborted"]
    body = {"text": PROMPTS[2], "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}, "stream": True}
    with http.stream("POST", "/generate", json=body) as r:
        next(line for line in r.iter_lines() if line.startswith("data:"))
    wait_until(lambda: (s := stats(http))["running"] == 0 and s["kv_slots_in_use"] == 0)
    assert stats(http)["requests_aborted"] == aborted + 1


def test_zmq_clients_see_only_their_own_outputs_and_garbage_disturbs_nothing(server, http, reference):
    a, b = ZmqClient(server.zmq_address), ZmqClient(server.zmq_address)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(http.post, "/generate", json={"text": PROMPTS[0], "sampling_params": GREEDY})
        a.sock.send(b"\xc1 not msgpack")
        a.sock.send_multipart([b"three", b"frames", b"here"])
        a.sock.send(msgspec.msgpack.encode({"type": "GenerateRequest", "rid": "bad", "text": 7}))
        assert a.recv() == ErrorReply(rid="bad", status=400, message="malformed message")
        a.send(zmq_generate("same", PROMPTS[1]))
        b.send(zmq_generate("same", PROMPTS[2]))
        a.send(zmq_generate("same", PROMPTS[2]))  # taken on this connection
        first = a.recv()
        assert isinstance(first, ErrorReply) and first.param == "rid"
        assert a.until_end("same")[-1].text == reference[PROMPTS[1]]["text"]
        assert b.until_end("same")[-1].text == reference[PROMPTS[2]]["text"]
        assert running.result().json()["text"] == reference[PROMPTS[0]]["text"]
    a.close()
    b.close()


def test_zmq_abort_ends_the_request_with_finish_reason_abort(server):
    client = ZmqClient(server.zmq_address)
    long = msgspec.structs.replace(zmq_generate("long", PROMPTS[2], max_new_tokens=400, ignore_eos=True), stream=True)
    client.send(long)
    assert isinstance(client.recv(), protocol.GenerateChunk)
    client.send(protocol.AbortRequest(rid="long"))
    final = client.until_end("long")[-1]
    assert isinstance(final, GenerateResult) and final.meta_info["finish_reason"]["type"] == "abort"
    client.send(protocol.GetStats())
    assert client.recv().stats["running"] == 0
    client.close()


@pytest.fixture(scope="module")
def keyed_server():
    handle = start_server(api_key="sekrit")
    yield handle
    handle.shutdown()


def test_api_key_is_required_on_http_and_zmq(keyed_server):
    with httpx.Client(base_url=keyed_server.url, trust_env=False, timeout=60) as client:
        body = {"text": "hi", "sampling_params": {"max_new_tokens": 1}}
        assert client.post("/generate", json=body).status_code == 401
        wrong = client.post("/generate", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        assert client.get("/stats").status_code == 401
        assert client.get("/health").status_code == 200
        right = client.post("/generate", json=body, headers={"Authorization": "Bearer sekrit"})
        assert right.status_code == 200
    zmq_client = ZmqClient(keyed_server.zmq_address)
    zmq_client.send(zmq_generate("z", "hi", max_new_tokens=1))
    assert zmq_client.recv().status == 401
    zmq_client.send(msgspec.structs.replace(zmq_generate("z", "hi", max_new_tokens=1), api_key="sekrit"))
    assert isinstance(zmq_client.until_end("z")[-1], GenerateResult)
    zmq_client.close()


def test_killing_the_worker_fails_requests_with_503_and_serve_exits_nonzero(keyed_server):
    auth = {"Authorization": "Bearer sekrit"}
    with httpx.Client(base_url=keyed_server.url, trust_env=False, timeout=60, headers=auth) as client:
        worker_pid = client.get("/stats").json()["worker_pid"]
        body = {"text": "Count:", "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}, "stream": True}
        with client.stream("POST", "/generate", json=body) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data:"))
            os.kill(worker_pid, signal.SIGKILL)
            errors = [line for line in lines if '"error"' in line]
        assert errors and "worker" in errors[0]
        assert client.get("/health").status_code == 503
        assert client.post("/generate", json={"text": "hi"}).status_code == 503
    assert keyed_server.process.wait(timeout=30) != 0


def test_sigterm_stops_serve_and_leaves_no_process(server, http):
    worker_pid = stats(http)["worker_pid"]
    assert server.shutdown() == 0
    wait_until(lambda: not os.path.exists(f"/proc/{worker_pid}"), timeout=10)
    port = server.args.port
    assert [pid for pid in os.listdir("/proc") if pid.isdigit() and _is_server_of(pid, port)] == []


def _is_server_of(pid: str, port: int) -> bool:
    """A launcher (`--port P`) or worker (`"port": P` in its --config) of the server on `port`."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"radixrt" in cmdline and (f"--port\0{port}\0".encode() in cmdline or f'"port": {port},'.encode() in cmdline)
