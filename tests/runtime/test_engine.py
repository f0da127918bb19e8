"""radixrt.Engine end to end on the embedded model (in-process scheduler and model)."""

from __future__ import annotations

import time

import pytest

import radixrt
from radixrt.errors import InvalidRequest
from tests.cpu import BF16_INVARIANT

GREEDY = {"temperature": 0, "max_new_tokens": 12}


@pytest.fixture(scope="module")
def engine():
    eng = radixrt.Engine(model="default", dtype="float32", kv_slots=4096)
    yield eng
    eng.shutdown()


def chat(engine, question: str, system: str = "You are a helpful assistant.") -> str:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return engine.tm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_answers_a_chat_question(engine):
    out = engine.generate(chat(engine, "What is the capital of France?"), GREEDY)
    assert "Paris" in out["text"]
    meta = out["meta_info"]
    assert meta["prompt_tokens"] > 10 and 0 < meta["completion_tokens"] <= 12
    assert meta["finish_reason"]["type"] in ("stop", "length")


def test_greedy_output_is_the_same_alone_in_a_batch_and_from_the_cache(engine):
    prompts = [chat(engine, q) for q in ("Name a fruit.", "Name a color.", "Count to three.")]
    engine.flush_cache()
    alone = []
    for p in prompts:
        engine.flush_cache()
        alone.append(engine.generate(p, GREEDY)["text"])
    engine.flush_cache()
    batch = engine.generate(prompts, GREEDY)
    assert [b["text"] for b in batch] == alone
    warm = engine.generate(prompts, GREEDY)
    assert [w["text"] for w in warm] == alone
    assert all(w["meta_info"]["cached_tokens"] == w["meta_info"]["prompt_tokens"] - 1 for w in warm)


def test_stream_chunks_concatenate_to_the_full_text(engine):
    prompt = chat(engine, "Write a haiku about the sea.")
    full = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 24})
    chunks = list(engine.generate(prompt, {"temperature": 0, "max_new_tokens": 24}, stream=True))
    assert "".join(c["text"] for c in chunks) == full["text"]
    assert chunks[-1]["meta_info"]["finish_reason"] is not None


def test_stop_string_is_trimmed(engine):
    prompt = chat(engine, "Count from 1 to 10, separated by commas.")
    out = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 40, "stop": ["5"]})
    assert "5" not in out["text"] and out["meta_info"]["finish_reason"] == {"type": "stop", "matched": "5"}


def test_n_samples_share_the_prompt_and_seeds_reproduce(engine):
    prompt = chat(engine, "Tell me a random animal.")
    params = {"temperature": 1.0, "max_new_tokens": 8, "n": 3, "seed": 7}
    first = engine.generate(prompt, params)
    again = engine.generate(prompt, params)
    assert len(first) == 3 and [o["text"] for o in first] == [o["text"] for o in again]
    assert all(o["meta_info"]["cached_tokens"] > 0 for o in again)


def test_prompt_logprobs_are_returned_from_the_start_position(engine):
    out = engine.generate("The quick brown fox jumps", {"max_new_tokens": 0}, return_logprob=True, logprob_start_len=1)
    lps = out["meta_info"]["input_token_logprobs"]
    assert len(lps) == out["meta_info"]["prompt_tokens"] - 1
    assert all(lp[0] <= 0 for lp in lps)


def test_bad_parameters_raise_and_the_engine_keeps_serving(engine):
    with pytest.raises(InvalidRequest, match="top_p"):
        engine.generate("hi", {"top_p": 0})
    with pytest.raises(InvalidRequest, match="context length"):
        engine.generate("hi " * 9000, GREEDY)
    assert engine.generate("hi", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2


def test_stats_books_balance(engine):
    s = engine.stats()
    assert s["kv_slots_free"] + s["kv_slots_cached"] + s["kv_slots_in_use"] == s["kv_slots_total"]
    assert s["kv_slots_in_use"] == 0 and s["running"] == 0
    assert engine.flush_cache() and engine.stats()["kv_slots_cached"] == 0


def test_stats_count_the_time_in_model_steps(engine):
    before = engine.stats()["busy_s"]
    start = time.perf_counter()
    engine.generate("Count the time", {"max_new_tokens": 4, "ignore_eos": True})
    busy = engine.stats()["busy_s"] - before
    assert 0 < busy < time.perf_counter() - start


def test_a_model_that_fails_to_load_raises_in_the_caller():
    # the model is built on the scheduler thread; its error must still reach the constructor
    with pytest.raises(ValueError, match="needs a CUDA device"):
        radixrt.Engine(model="default", device="cpu", attention_backend="flashinfer", kv_slots=256)


@pytest.fixture(scope="module")
def bf16_engine():
    if not BF16_INVARIANT:
        pytest.skip("needs radixrt's C++ CPU kernels")
    eng = radixrt.Engine(model="default", dtype="bfloat16", kv_slots=8192)
    yield eng
    eng.shutdown()


def test_bf16_greedy_output_does_not_change_when_the_prompt_comes_from_the_cache(bf16_engine):
    # cold: the whole prompt prefilled at once; warm: all but its last token cached, so that token
    # is prefilled alone. Both must give the same tokens (users see radix hits flip outputs elsewhere).
    eng = bf16_engine
    prompts = [chat(eng, f"Tell me one fact about the number {i}.") for i in range(8)]
    params = {"temperature": 0, "max_new_tokens": 24}
    cold, warm = [], []
    for p in prompts:
        assert eng.flush_cache()
        cold.append(eng.generate(p, params))
        warm.append(eng.generate(p, params))
    for c, w in zip(cold, warm):
        assert w["meta_info"]["cached_tokens"] == w["meta_info"]["prompt_tokens"] - 1  # a real hit
        assert w["output_ids"] == c["output_ids"]


def test_bf16_greedy_output_is_the_same_alone_and_in_a_batch_sharing_a_long_prefix(bf16_engine):
    # 10 conversations after one long system prompt decode together: enough sharers for the
    # shared-prefix decode kernel, which greedy (batch-invariant) steps must not use
    eng = bf16_engine
    system = "You are a travel guide. " + " ".join(f"Rule {i}: answer briefly and name one place." for i in range(20))
    prompts = [chat(eng, f"Suggest a trip idea number {i}.", system) for i in range(10)]
    params = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
    alone = [eng.generate(p, params)["output_ids"] for p in prompts]
    assert eng.flush_cache()
    together = [out["output_ids"] for out in eng.generate(prompts, params)]
    assert together == alone
