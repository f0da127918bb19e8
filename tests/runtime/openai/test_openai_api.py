"""The OpenAI API end to end: the official `openai` client against a real `radixrt serve`."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.runtime.server_harness import http_client, idle, start_server, wait_until

pytestmark = pytest.mark.slow

MODEL_ID = "SmolLM2-135M-Instruct"
COLORS = [{"role": "user", "content": "Name three colors."}]
GREEDY = {"temperature": 0, "max_tokens": 12}
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "London", "Tokyo"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "sunny": {"type": "boolean"},
    },
    "required": ["city", "days", "sunny"],
}
WEATHER_FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER, "strict": True}}
TIME_PARAMS = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME_PARAMS}},
]
PARAMS = {"get_weather": WEATHER, "get_time": TIME_PARAMS}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def client(server):
    transport = httpx.Client(trust_env=False, timeout=120)
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", http_client=transport, max_retries=0) as c:
        yield c


def chat(client: openai.OpenAI, messages: list[dict[str, Any]] = COLORS, **kw: Any) -> Any:
    return client.chat.completions.create(**{"model": "default", "messages": messages, **kw})


def assert_valid_call(choice: Any, names: tuple[str, ...]) -> None:
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


def weather_turn(question: str, call_id: str, city: str, answer: str) -> list[dict[str, Any]]:
    arguments = json.dumps({"city": city, "days": 1, "sunny": False})
    call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": answer},
        {"role": "assistant", "content": f"It is {answer}"},
    ]


# ---- chat ----------------------------------------------------------------------------------


def test_models_lists_the_served_model_and_chat_answers_under_its_names(client):
    (model,) = client.models.list().data
    assert model.id == MODEL_ID and client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    by_id, by_alias = chat(client, model=MODEL_ID, **GREEDY), chat(client, **GREEDY)
    assert by_id.model == by_alias.model == MODEL_ID and by_id.object == "chat.completion"
    choice = by_id.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == by_alias.choices[0].message.content
    assert choice.finish_reason in ("stop", "length") and choice.message.content
    usage = by_id.usage
    assert 0 < usage.completion_tokens <= 12 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_chat_chunks_join_to_the_full_message_and_usage_comes_last(client):
    full = chat(client, **GREEDY)
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        full.choices[0].finish_reason
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert all(c.choices and c.usage is None for c in chat(client, stream=True, **GREEDY))


def test_n_seeded_choices_differ_and_stream_the_same_texts(server, client):
    # NOTE: both runs start from an empty cache: the float32 server's logits for a prompt computed
    # whole and for one read from the cache differ in the last bits, enough to move a tail sample
    sampled = {"temperature": 1.0, "max_tokens": 8, "seed": 11, "n": 3}
    with http_client(server) as http:
        assert http.post("/flush_cache").status_code == 200
        plain = chat(client, **sampled)
        assert [c.index for c in plain.choices] == [0, 1, 2]
        texts = [c.message.content for c in plain.choices]
        assert len(set(texts)) > 1 and plain.usage.completion_tokens <= 24
        assert http.post("/flush_cache").status_code == 200
    streamed = [""] * 3
    for chunk in chat(client, stream=True, **sampled):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert streamed == texts


def test_the_same_seed_reproduces_a_sampled_answer(client):
    kw = {"temperature": 1.0, "max_tokens": 12, "seed": 1234}
    first, again = (chat(client, **kw).choices[0].message.content for _ in range(2))
    assert first == again
    assert {chat(client, **{**kw, "seed": s}).choices[0].message.content for s in (1, 2)} != {first}


def test_stop_sequences_cut_the_text_before_them(client):
    full = chat(client, temperature=0, max_tokens=16).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = chat(client, temperature=0, max_tokens=16, stop=[stop, "never appears"]).choices[0]
    assert cut.message.content == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_logprobs_tokens_join_to_the_content(client):
    choice = chat(client, logprobs=True, top_logprobs=3, **GREEDY).choices[0]
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert bytes(t.bytes).decode() == t.token and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        assert t.token == t.top_logprobs[0].token and t.logprob == pytest.approx(t.top_logprobs[0].logprob)


# ---- structured output and tools -----------------------------------------------------------


def test_json_schema_completions_always_validate(client):
    ask = [{"role": "user", "content": "Report the weather as JSON."}]

    def sample(seed: int) -> list[Any]:
        return chat(client, ask, temperature=1.0, n=5, seed=seed, max_tokens=40, response_format=WEATHER_FORMAT).choices

    with ThreadPoolExecutor(4) as pool:
        choices = [c for batch in pool.map(sample, (1, 2, 3, 4)) for c in batch]
    assert len(choices) == 20
    for c in choices:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.message.content), WEATHER)
    cut = chat(client, ask, temperature=0, max_tokens=3, response_format=WEATHER_FORMAT).choices[0]
    assert cut.finish_reason == "length" and cut.message.content.startswith("{")


def test_a_named_tool_choice_always_calls_it_with_valid_arguments(client):
    ask = [{"role": "user", "content": "What is the weather in Tokyo this week?"}]
    named = chat(client, ask, tools=TOOLS, tool_choice=NAMED, n=4, temperature=1.0, seed=5, max_tokens=40)
    for choice in named.choices:
        assert_valid_call(choice, ("get_weather",))
    required = chat(client, ask, tools=TOOLS, tool_choice="required", n=3, temperature=1.0, seed=6, max_tokens=40)
    for choice in required.choices:
        assert_valid_call(choice, ("get_weather", "get_time"))


def test_auto_tool_choice_calls_when_the_conversation_asks_and_answers_otherwise(client):
    # two worked examples make calling the greedy choice for a weather question (tool_choice defaults to auto)
    shots = weather_turn("Weather in London?", "call_1", "London", "rain, 12 C.")
    shots += weather_turn("And the weather in Paris?", "call_2", "Paris", "sunny, 20 C.")
    tokyo = shots + [{"role": "user", "content": "What is the weather in Tokyo?"}]
    weather = chat(client, tokyo, tools=TOOLS, temperature=0, max_tokens=40)
    assert_valid_call(weather.choices[0], ("get_weather", "get_time"))
    hello = chat(client, shots + [{"role": "user", "content": "Say hello."}], tools=TOOLS, tool_choice="auto", **GREEDY)
    assert hello.choices[0].message.tool_calls is None and hello.choices[0].message.content
    chunks = list(chat(client, tokyo, tools=TOOLS, temperature=0, max_tokens=40, stream=True))
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    (called,) = weather.choices[0].message.tool_calls
    assert [c.function.model_dump() for c in calls] == [called.function.model_dump()]
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_a_tool_result_turn_continues_from_the_cached_first_turn(client, http):
    wait_until(lambda: http.post("/flush_cache").json()["flushed"])
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = chat(client, ask, tools=TOOLS, tool_choice=NAMED, temperature=0, max_tokens=40)
    call = first.choices[0].message.tool_calls[0]
    answer = {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 C"}
    turn = ask + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}, answer]
    second = chat(client, turn, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=16)
    reply = second.choices[0]
    assert reply.message.tool_calls is None and reply.message.content and reply.finish_reason in ("stop", "length")
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens // 2


# ---- completions ---------------------------------------------------------------------------


def test_completions_echo_each_prompt_n_times_with_logprobs(client):
    prompts = ["The sky is", "Paris is"]
    kw = {"model": "default", "max_tokens": 5, "temperature": 0, "logprobs": 2}
    out = client.completions.create(prompt=prompts, n=2, echo=True, **kw)
    assert out.object == "text_completion" and [c.index for c in out.choices] == [0, 1, 2, 3]
    for c in out.choices:
        prompt = prompts[c.index // 2]
        assert c.text.startswith(prompt) and "".join(c.logprobs.tokens) == c.text
        assert c.logprobs.token_logprobs[0] is None and c.logprobs.text_offset[0] == 0
        assert all(len(top) == 2 for top in c.logprobs.top_logprobs[1:])
    assert out.choices[0].text == out.choices[1].text
    echoed = [sum(o < len(p) for o in out.choices[2 * i].logprobs.text_offset) for i, p in enumerate(prompts)]
    assert out.usage.prompt_tokens == sum(echoed)  # each prompt counts once, not n times
    plain = client.completions.create(prompt=prompts[0], **kw).choices[0]
    assert prompts[0] + plain.text == out.choices[0].text and plain.logprobs.text_offset[0] == 0


def test_streamed_completion_matches_the_plain_one_and_token_prompts_work(client):
    kw = {"model": "default", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
    plain = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason == "length"
    ids = client.completions.create(model="default", prompt=[[504, 3000, 40], [28, 29]], max_tokens=3, temperature=0)
    assert len(ids.choices) == 2 and ids.usage.prompt_tokens == 5


# ---- errors --------------------------------------------------------------------------------


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    return error


def test_malformed_requests_are_400_with_a_message(client, http):
    assert error_of(http.post("/v1/chat/completions", content=b"{not json"), 400)["message"].startswith("the body")
    assert error_of(http.post("/v1/chat/completions", json={"messages": "hi"}), 400)["param"] == "messages"
    assert error_of(http.post("/v1/chat/completions", json={"model": "x"}), 400)["param"] == "messages"
    orphan = {"messages": [{"role": "tool", "tool_call_id": "c", "content": "x"}]}
    assert "tool message" in error_of(http.post("/v1/chat/completions", json=orphan), 400)["message"]
    assert error_of(http.post("/v1/completions", json={"prompt": "a", "suffix": "b"}), 400)["param"] == "suffix"
    assert error_of(http.post("/v1/completions", json={"prompt": [10**9]}), 400)["param"] == "prompt"
    too_long = error_of(http.post("/v1/completions", json={"prompt": "hi " * 9000}), 400)
    assert too_long["param"] == "prompt" and "context length" in too_long["message"]
    assert error_of(http.post("/v1/completions", json={"prompt": "a", "n": "2"}), 400)["param"] == "n"
    with pytest.raises(openai.BadRequestError) as unknown:
        chat(client, model="gpt-4o", **GREEDY)
    assert unknown.value.status_code == 400 and "gpt-4o" in unknown.value.message


def test_a_schema_the_grammar_cannot_enforce_is_400_also_when_streaming(client):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            chat(client, response_format=bad, stream=stream, **GREEDY)
        assert "uniqueItems" in info.value.message


def test_a_client_leaving_a_stream_aborts_its_request(client, http):
    endless = chat(client, stream=True, temperature=0, max_tokens=2000, extra_body={"ignore_eos": True})
    for _, _chunk in zip(range(3), endless):
        pass
    endless.close()
    wait_until(lambda: idle(http))


def test_a_wrong_api_key_is_401_on_every_openai_endpoint(tiny_model_dir):
    def client_with(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=guarded.url + "/v1", api_key=key, http_client=http, max_retries=0)

    with start_server(model=str(tiny_model_dir), api_key="sekret") as guarded, http_client(guarded) as http:
        wrong = client_with("wrong")
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="default", messages=COLORS, max_tokens=2)
        assert http.post("/v1/completions", json={"prompt": "a"}).status_code == 401  # no key at all
        assert http.get("/health").status_code == 200
        right = client_with("sekret").chat.completions.create(model="default", messages=COLORS, max_tokens=2)
        assert right.choices[0].finish_reason == "length"
