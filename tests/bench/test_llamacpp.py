"""The llama.cpp baseline on the tiny model written as a float32 GGUF: same tokens as the other
systems, logprobs equal to transformers', grammars, stops and ignore_eos honoured, the previous
prompt's prefix reused, and the workloads' programs finish. Skipped where llama-cpp-python is
not installed (`make test` never builds it; `make bench` does)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make bench` builds it)")

from radixrt.bench.gguf_export import export_gguf  # noqa: E402
from radixrt.bench.llamacpp_backend import LlamaCppBackend  # noqa: E402
from radixrt.bench.regex_gbnf import regex_to_gbnf  # noqa: E402
from radixrt.bench.runner import run_workload  # noqa: E402
from radixrt.bench.synthetic import TextGen  # noqa: E402
from radixrt.bench.systems import Session  # noqa: E402
from radixrt.bench.workloads import WORKLOADS  # noqa: E402
from radixrt.bench.workloads.json_decode import FIELDS  # noqa: E402
from radixrt.runtime.protocol import SamplingParams  # noqa: E402
from radixrt.workers.model_store import embedded_gguf  # noqa: E402

GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def llama(bench_model_dir, tmp_path_factory):
    path = export_gguf(bench_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.f32.gguf", dtype="f32",
                       template=embedded_gguf())  # fmt: skip
    backend = LlamaCppBackend(path, bench_model_dir, n_ctx=8192, n_threads=2)
    yield backend
    backend.shutdown()


def test_tokens_are_the_other_systems(llama, encode):
    for text in (TextGen(0).paragraph(300), WORKLOADS["react"].build(1, 0).program.bind_arguments["template"],
                 "<|im_start|>user\nHi there!<|im_end|>\n"):  # fmt: skip
        assert llama.seq.tokenize(text) == encode(text)


def test_scores_match_transformers(llama, hf_session):
    prefix, choices = "The color of the sky is", [" blue", " a deep shade of green", " red and gold at dusk"]
    ours, theirs = llama.score(prefix, choices).scores, hf_session.backend.score(prefix, choices).scores
    for a, b in zip(ours, theirs):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=2e-3)


def test_greedy_text_stops_and_lengths(llama):
    out = llama.generate("Once upon a time", SamplingParams(max_new_tokens=12, ignore_eos=True, **GREEDY))
    assert out.meta_info["completion_tokens"] == 12 == len(out.output_ids)
    stop = out.text[len(out.text) // 2 :][:3]
    cut = llama.generate("Once upon a time", SamplingParams(max_new_tokens=12, stop=[stop], **GREEDY))
    assert cut.text == out.text[: out.text.index(stop)] and cut.meta_info["finish_reason"]["matched"] == stop


def test_the_previous_prompts_prefix_is_reused(llama):
    base = TextGen(1).paragraph(200)
    llama.flush_cache()
    first = llama.generate(base + " first", SamplingParams(max_new_tokens=1, **GREEDY))
    second = llama.generate(base + " second", SamplingParams(max_new_tokens=1, **GREEDY))
    assert first.meta_info["cached_tokens"] == 0
    assert second.meta_info["cached_tokens"] >= second.meta_info["prompt_tokens"] - 3


@pytest.mark.parametrize("name", list(FIELDS))
def test_regex_values_match_their_regex(llama, name):
    regex = FIELDS[name]
    out = llama.generate(f'A record.\n"{name}": ', SamplingParams(max_new_tokens=40, regex=regex, **GREEDY))
    assert re.fullmatch(regex, out.text) or out.meta_info["finish_reason"]["type"] == "length"


def test_json_schema_output_is_valid(llama):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
              "required": ["n", "ok"]}  # fmt: skip
    out = llama.generate("JSON: ", SamplingParams(max_new_tokens=40, json_schema=json.dumps(schema), **GREEDY))
    jsonschema.validate(json.loads(out.text), schema)


def test_every_workload_regex_is_a_grammar_llama_cpp_parses():
    from llama_cpp import LlamaGrammar

    for regex in FIELDS.values():
        LlamaGrammar.from_string(regex_to_gbnf(regex), verbose=False)


@pytest.mark.parametrize("name", ["few_shot", "hellaswag", "multi_turn", "json_decode"])
def test_workload_programs_finish_on_llama_cpp(name, llama, encode):
    run = run_workload(WORKLOADS[name], Session("llamacpp", llama), num_programs=2, parallel=2, seed=1, encode=encode)
    assert run.figures["problems"] == [] and run.figures["ok_programs"] == 2
    assert run.figures["prompt_tokens"] == run.figures["trace_prompt_tokens"]  # the same tokens as radixrt
    assert 0.0 <= run.figures["cache_hit_rate"] <= run.figures["optimal_hit_rate"] + 0.02


def test_the_micro_benchmark_measures_llama_cpps_prefill_and_batch_1_decode(bench_model_dir, tmp_path):
    from radixrt.bench.micro_llamacpp import run_micro_llamacpp

    path = export_gguf(bench_model_dir, tmp_path / "tiny.f32.gguf", dtype="f32", template=embedded_gguf())
    measured = run_micro_llamacpp(path, n_threads=2, repeats=1)
    assert measured["gguf"] == "tiny.f32.gguf"
    assert measured["prefill_tokens_per_s"] > 0 and measured["decode_tokens_per_s"]["1"] > 0
