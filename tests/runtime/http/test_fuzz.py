"""Property-based fuzzing of the HTTP API and the ZMQ socket of a real `radixrt serve`.

Whatever arrives (random JSON of wrong types, nulls, huge numbers, nested junk; random or
truncated msgpack frames): no 5xx other than 503, no crash, no hang, no leaked KV slot, and a
normal request still completes afterwards.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixrt.runtime import protocol
from radixrt.runtime.openai.protocol import ChatRequest, CompletionRequest
from radixrt.runtime.protocol import ErrorReply, GenerateResult, SamplingParams
from tests.runtime.server_harness import ZmqClient, http_client, idle, start_server, wait_until, zmq_generate

pytestmark = pytest.mark.slow

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples on every CI run (set False locally to explore)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
BODY_KEYS = ["text", "input_ids", "sampling_params", "stream", "rid", "return_logprob", "logprob_start_len",
             "top_logprobs_num", "image_data", "lora_path"]  # fmt: skip
SAMPLING_KEYS = [*SamplingParams.__struct_fields__, "stop_regex", "ebnf"]
TAGS = ["GenerateRequest", "AbortRequest", "FlushCache", "GetStats", "GetModelInfo", "ScoreRequest", "Nope"]


def junk_of(ints: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """Nested lists and objects of random scalars."""
    scalars = st.none() | st.booleans() | ints | st.floats(allow_nan=False) | st.text(max_size=20)
    nested = lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)  # noqa: E731
    return st.recursive(scalars, nested, max_leaves=12)


def plausible_of(ints: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """Values of the types a field might take, and some it should not."""
    return st.one_of(ints, st.text(max_size=30), st.lists(ints, max_size=8), st.booleans(), st.none(),
                     st.lists(st.text(max_size=10), max_size=3), st.floats(-5, 5), junk_of(ints))  # fmt: skip


EDGE_INTS = [2**31, 2**63 - 1, -(2**63), 2**64 - 1]
json_ints = st.integers(-5, 200) | st.sampled_from([*EDGE_INTS, 2**64, -(2**63) - 1, 10**30]) | st.integers()
msgpack_ints = st.integers(-5, 200) | st.sampled_from(EDGE_INTS) | st.integers(-(2**63), 2**64 - 1)
junk, plausible = junk_of(json_ints), plausible_of(json_ints)
sampling = st.dictionaries(st.sampled_from(SAMPLING_KEYS), plausible, max_size=5)
# within the server's max_new_tokens limit, so that most of these run
runnable = st.builds(lambda extra, n: {**extra, "max_new_tokens": n}, sampling, st.integers(0, 16))
bodies = st.one_of(
    junk,
    st.dictionaries(st.sampled_from(BODY_KEYS), plausible | sampling, max_size=6),
    st.fixed_dictionaries({"text": st.text(max_size=40) | st.lists(st.text(max_size=10), max_size=3)},
                          optional={"sampling_params": runnable, "stream": st.booleans(), "rid": plausible,
                                    "return_logprob": st.booleans(), "top_logprobs_num": st.integers(0, 21)}),
)  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    handle = start_server(model=str(tiny_model_dir), max_new_tokens_limit=16, max_queued_requests=24,
                          grammar_time_limit=2.0, max_body_bytes=1 << 20)  # fmt: skip
    yield handle
    handle.shutdown()


@pytest.fixture(scope="module")
def http(server):
    with http_client(server, timeout=60) as client:
        yield client


def assert_no_server_error(status: int, text: str) -> None:
    assert status < 500 or status == 503, text


@FUZZ
@given(body=bodies)
def test_random_json_bodies_never_get_a_5xx(http, body):
    raw = json.dumps(body).encode()  # NaN/Infinity stay in: not JSON, so the server must say 400
    with http.stream("POST", "/generate", content=raw, headers={"content-type": "application/json"}) as r:
        text = r.read().decode(errors="replace")
    assert_no_server_error(r.status_code, text)
    if r.status_code == 200 and "text/event-stream" in r.headers.get("content-type", ""):
        for line in text.splitlines():  # errors inside a stream carry their status too
            if line.startswith("data: {") and '"error"' in line:
                assert_no_server_error(json.loads(line[6:])["error"]["code"], line)


def from_json_schema(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values that mostly fit a (msgspec-made) JSON schema: its types, enums and nesting, with
    bounds left out on purpose so that out-of-range numbers reach the server too."""
    if "$ref" in schema:
        return from_json_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, depth)
    if "anyOf" in schema:
        return st.one_of([from_json_schema(s, defs, depth) for s in schema["anyOf"]])
    if "enum" in schema or "const" in schema:
        return st.sampled_from(schema.get("enum", [schema.get("const")]))
    kind = schema.get("type")
    if kind == "object" and "properties" in schema and depth < 4:
        props = {k: from_json_schema(v, defs, depth + 1) for k, v in schema["properties"].items()}
        required = {k: props.pop(k) for k in schema.get("required", [])}
        return st.fixed_dictionaries(required, optional=props)
    if kind == "array" and depth < 4:
        return st.lists(from_json_schema(schema.get("items", {}), defs, depth + 1), max_size=3)
    leaves = {"string": st.text(max_size=20), "integer": st.integers(-3, 40) | st.sampled_from(EDGE_INTS),
              "number": st.floats(-3, 3) | st.sampled_from([1e30, -1e30]), "boolean": st.booleans(),
              "null": st.none()}  # fmt: skip
    return leaves.get(kind, junk)


def request_bodies(struct: type) -> st.SearchStrategy[Any]:
    schema = msgspec.json.schema(struct)
    return from_json_schema(schema, schema.get("$defs", {}))


messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                                            "content": st.text(max_size=20)}), min_size=1, max_size=3)  # fmt: skip
# schema-made fields over a valid core, so that many requests get past validation and run
runnable_chat = st.builds(lambda extra, msgs, n: {**extra, "messages": msgs, "max_tokens": n},
                          request_bodies(ChatRequest), messages, st.integers(0, 16))  # fmt: skip
runnable_completion = st.builds(lambda extra, prompt, n: {**extra, "prompt": prompt, "max_tokens": n},
                                request_bodies(CompletionRequest), st.text(max_size=20), st.integers(0, 16))  # fmt: skip
OPENAI_BODIES = {"/v1/chat/completions": request_bodies(ChatRequest) | runnable_chat,
                 "/v1/completions": request_bodies(CompletionRequest) | runnable_completion}  # fmt: skip


@FUZZ
@given(data=st.data(), path=st.sampled_from(sorted(OPENAI_BODIES)))
def test_openai_bodies_from_the_request_schema_never_get_a_5xx(http, data, path):
    body = data.draw(OPENAI_BODIES[path] | junk)
    raw = json.dumps(body).encode()  # Infinity stays in: not JSON, so the server must say 400
    with http.stream("POST", path, content=raw, headers={"content-type": "application/json"}) as r:
        text = r.read().decode(errors="replace")
    assert_no_server_error(r.status_code, text)
    if r.status_code == 200 and "text/event-stream" in r.headers.get("content-type", ""):
        for line in text.splitlines():
            if line.startswith("data: {") and '"error"' in line:
                assert_no_server_error(json.loads(line[6:])["error"]["code"], line)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_random_bytes_as_a_body_never_get_a_5xx(http, raw):
    answer = http.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert_no_server_error(answer.status_code, answer.text)


def valid_messages() -> st.SearchStrategy[Any]:
    gen = st.builds(lambda rid, text, n: zmq_generate(rid, text, max_new_tokens=n), st.text(max_size=8),
                    st.text(max_size=30), st.integers(0, 16))  # fmt: skip
    score = st.builds(lambda rid, p, c: protocol.ScoreRequest(rid=rid, prefix=p, continuations=c),
                      st.text(max_size=8), st.text(max_size=20), st.lists(st.text(max_size=8), max_size=3))  # fmt: skip
    control = st.sampled_from([protocol.GetStats(), protocol.GetModelInfo(), protocol.AbortRequest(rid="x")])
    return gen | score | control


FIELDS = ["rid", "text", "input_ids", "sampling", "prefix", "continuations", "stream", "api_key"]
frames = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda msg, cut: protocol.encoder().encode(msg)[:cut], valid_messages(), st.integers(0, 60)),
    st.builds(
        lambda tag, fields: msgspec.msgpack.encode({"type": tag, **fields}),
        st.sampled_from(TAGS),
        st.dictionaries(st.sampled_from(FIELDS), plausible_of(msgpack_ints), max_size=5),
    ),  # fmt: skip
    st.builds(lambda obj: msgspec.msgpack.encode(obj), junk_of(msgpack_ints)),
)


@pytest.fixture(scope="module")
def fuzz_client(server):
    client = ZmqClient(server.zmq_address)
    yield client
    client.close()


def check_replies(client: ZmqClient, wait_ms: int) -> None:
    """Every reply waiting is a well-formed message, and no error is a 5xx other than 503."""
    while client.sock.poll(wait_ms):
        *envelope, payload = client.sock.recv_multipart()  # [b"", payload] answers a REQ-style message
        assert envelope in ([], [b""])
        decoded = client.decoder.decode(payload)
        if isinstance(decoded, ErrorReply):
            assert_no_server_error(decoded.status, decoded.message)


@FUZZ
@given(message=st.lists(frames, min_size=1, max_size=3))
def test_random_and_truncated_msgpack_frames_never_hurt_the_server(fuzz_client, message):
    fuzz_client.sock.send_multipart(message)
    check_replies(fuzz_client, wait_ms=0)


def test_after_the_fuzzing_the_server_is_alive_idle_and_serves(server, http, fuzz_client):
    assert server.process.poll() is None
    wait_until(lambda: idle(http), timeout=120)
    check_replies(fuzz_client, wait_ms=200)  # replies still on their way
    assert http.post("/generate", json={"text": "Hello", "sampling_params": {"max_new_tokens": 2}}).status_code == 200
    client = ZmqClient(server.zmq_address)
    client.send(zmq_generate("after", "Hello"))
    assert isinstance(client.until_end("after")[-1], GenerateResult)
    client.close()
    assert http.get("/health").status_code == 200
    assert not zmq.Context.instance().closed
