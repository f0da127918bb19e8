"""Speculative decoding through radixrt.Engine and on the embedded model in bf16: greedy outputs are
the same with it on and off (verification rows are decode rows, bit for bit), n > 1 included, and
meta_info counts each call's accepted drafts."""

from __future__ import annotations

import pytest

import radixrt
from tests.cpu import BF16_INVARIANT
from tests.runtime.sched_harness import Harness
from tests.runtime.scheduler.test_speculative import run_rounds

PASSAGE = (
    "The Arden bridge crosses the river at the old harbor. It was built of stone in the early years, "
    "and the market road runs over it to the castle."
)
QUESTIONS = [
    f"Here is a passage:\n{PASSAGE}\nQuote the passage exactly.",
    f"Here is a passage:\n{PASSAGE}\nWhat does the market road run over? Answer with a quote.",
    'Write the JSON {"tool": "search", "query": "Arden bridge"} three times, one per line.',
    "Count from one to twenty in words, separated by commas.",
]


def test_bad_speculation_arguments_fail_the_engine_with_the_field_named(tiny_model_dir):
    with pytest.raises(ValueError, match="speculative must be one of"):
        radixrt.Engine(model=str(tiny_model_dir), dtype="float32", speculative="medusa")
    with pytest.raises(ValueError, match="speculative_tokens must be in"):
        radixrt.Engine(model=str(tiny_model_dir), dtype="float32", speculative="ngram", speculative_tokens=64)


def test_n_copies_of_a_greedy_prompt_are_identical_with_speculation_on_and_off(tiny_model_dir):
    params = {"temperature": 0, "max_new_tokens": 24, "n": 3, "ignore_eos": True}
    prompts = ["one two three one two three one two", "alpha beta gamma alpha beta"]
    outputs = {}
    for mode in ("off", "ngram"):
        with radixrt.Engine(model=str(tiny_model_dir), dtype="float32", kv_slots=2048, speculative=mode) as eng:
            first = eng.generate(prompts, params)
            again = eng.generate(prompts, params)  # drafts from the first call's outputs in the tree
            outputs[mode] = [o["output_ids"] for o in first + again]
            metas = [o["meta_info"] for o in again]
    assert len(outputs["off"]) == 12 and outputs["ngram"] == outputs["off"]
    assert all(m["spec_accepted_tokens"] > 0 and m["spec_verify_ct"] > 0 for m in metas)


@pytest.fixture(scope="module")
def chat_prompts(embedded_model_dir) -> list[list[int]]:
    from radixrt.runtime.server.tokenizer_manager import load_tokenizer

    tokenizer = load_tokenizer(str(embedded_model_dir))
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in QUESTIONS
    ]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


@pytest.mark.skipif(not BF16_INVARIANT, reason="needs radixrt's C++ CPU kernels")
@pytest.mark.parametrize("alone", [False, True])
def test_bf16_greedy_outputs_of_the_embedded_model_are_identical_with_speculation_on_and_off(
    embedded_model_dir, chat_prompts, alone
):
    # logprobs too: they are the same only where the logits are the same bits
    requests = [{"ids": p, "max_new_tokens": 40, "return_logprob": True} for p in chat_prompts]
    args = {"dtype": "bfloat16", "kv_slots": 8192}
    h_off = Harness(embedded_model_dir, **args)
    off = run_rounds(h_off, requests, alone=alone)
    h = Harness(embedded_model_dir, speculative="ngram", **args)
    assert run_rounds(h, requests, alone=alone) == off
    for on_rid, off_rid in zip(h.ran, h_off.ran):
        assert h.finals[on_rid].output_logprobs == h_off.finals[off_rid].output_logprobs
    stats = h.stats()
    assert 0 < stats["spec_accepted_tokens"] < stats["spec_draft_tokens"]
