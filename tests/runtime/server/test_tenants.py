"""A real server with three API keys (flag + key file): each key is a tenant with its own cache salt,
on /generate, the OpenAI routes and both DSL transports; per-salt stats; pins over HTTP."""

from __future__ import annotations

import httpx
import pytest

from radixrt.lang.backends.runtime_endpoint import RuntimeEndpoint
from radixrt.runtime.protocol import SamplingParams
from tests.runtime.server_harness import http_client, start_server

KEYS = ("key-one", "key-two", "key-three")
PROMPT = "You are the support assistant of a bicycle shop. Answer briefly and politely. Question:"
GREEDY = {"max_new_tokens": 2, "temperature": 0.0}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text(f"# tenants\n{KEYS[1]}\n\n{KEYS[2]}\n")
    handle = start_server(model=str(tiny_model_dir), api_key=KEYS[0], api_key_file=str(key_file), max_pin_s=120.0)
    yield handle
    handle.shutdown()


@pytest.fixture(scope="module")
def clients(server):
    made = [http_client(server, headers={"Authorization": f"Bearer {k}"}) for k in KEYS]
    yield made
    for c in made:
        c.close()


def cached(client: httpx.Client, text: str, **fields) -> int:
    answer = client.post("/generate", json={"text": text, "sampling_params": GREEDY, **fields})
    assert answer.status_code == 200, answer.text
    return answer.json()["meta_info"]["cached_tokens"]


@pytest.mark.slow
def test_each_key_is_a_tenant_whose_cache_no_other_key_reads(clients):
    one, two, _ = clients
    text = PROMPT + " Do you fix tyres?"
    assert cached(one, text) == 0
    assert cached(one, text) > 0
    assert cached(two, text) == 0  # the other tenant: not one token
    assert cached(one, text, cache_salt="alice") == 0  # a salt splits a tenant further
    assert cached(one, text, cache_salt="alice") > 0
    assert cached(two, text, cache_salt="alice") == 0  # the same salt under another key is no way in
    stats = one.get("/stats").json()
    assert len(stats["cache_by_salt"]) >= 4 and not any(k in str(stats) for k in KEYS)
    metrics = one.get("/metrics").text
    assert "radixrt_cache_hit_tokens_by_salt_total{salt=" in metrics
    with httpx.Client(base_url=str(one.base_url), trust_env=False) as anonymous:
        assert anonymous.post("/generate", json={"text": text}).status_code == 401


@pytest.mark.slow
def test_the_openai_routes_carry_cache_salt(clients):
    one, two, _ = clients

    def completion(client: httpx.Client, salt: str) -> int:
        body = {"prompt": PROMPT + " Opening hours?", "max_tokens": 2, "temperature": 0, "cache_salt": salt}
        answer = client.post("/v1/completions", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

    assert completion(one, "oai") == 0 and completion(one, "oai") > 0
    assert completion(two, "oai") == 0
    chat = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1, "cache_salt": 7}
    assert one.post("/v1/chat/completions", json=chat).status_code == 400


@pytest.mark.slow
def test_both_dsl_transports_carry_the_salt_into_the_same_namespace(server):
    text = PROMPT + " Can I rent a tandem?"
    params = SamplingParams(max_new_tokens=2, temperature=0.0)
    over_zmq = RuntimeEndpoint(server.zmq_address, api_key=KEYS[2], cache_salt="dsl", timeout=120)
    over_http = RuntimeEndpoint(server.url, api_key=KEYS[2], cache_salt="dsl", timeout=120)
    unsalted = RuntimeEndpoint(server.url, api_key=KEYS[2], timeout=120)
    try:
        assert over_zmq.generate(text, params).meta_info["cached_tokens"] == 0
        assert over_http.generate(text, params).meta_info["cached_tokens"] > 0  # same key, same salt
        assert unsalted.generate(text, params).meta_info["cached_tokens"] == 0
        scores = over_zmq.score(text, [" yes", " no"]).scores
        assert all(s.cached_tokens > 0 for s in scores)
    finally:
        for endpoint in (over_zmq, over_http, unsalted):
            endpoint.shutdown()


@pytest.mark.slow
def test_pin_s_pins_the_prompt_and_bad_values_are_400(clients):
    _, _, three = clients
    answer = three.post("/generate", json={"text": PROMPT, "sampling_params": GREEDY, "pin_s": 60})
    meta = answer.json()["meta_info"]
    assert meta["pin"]["pinned_tokens"] == meta["prompt_tokens"] and meta["pin"]["trimmed"] is False
    for bad in (0, -1, 121, "soon"):
        refused = three.post("/generate", json={"text": PROMPT, "pin_s": bad})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "pin_s", refused.text
    flushed = three.post("/flush_cache").json()
    assert flushed["flushed"] is False and flushed["pinned_tokens"] == meta["prompt_tokens"]
    assert cached(three, PROMPT) > 0  # the flush kept it
