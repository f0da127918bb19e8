"""Every benchmark workload, at a tiny size (SGLang's output lengths, 2 programs), on a real
radixrt server and on the transformers baseline (a small random llama with the embedded
tokenizer): programs finish and their outputs are well-formed. Plus the optimal-hit-rate
arithmetic, the single-user runs and the CLI's outputs. No timing."""

from __future__ import annotations

import json

import pytest
import torch

from radixrt.bench import metrics
from radixrt.bench.cli import main
from radixrt.bench.recording import Call
from radixrt.bench.runner import run_interactive, run_one_at_a_time, run_workload
from radixrt.bench.workloads import WORKLOADS
from radixrt.runtime.protocol import SamplingParams
from radixrt.workers.layers import cpu_kernels

PROGRAMS = 2


def _run(name, session, encode):
    n = PROGRAMS if name != "tree_of_thought" else 1  # 39 gens of 256 tokens a program: one is enough
    return run_workload(WORKLOADS[name], session, num_programs=n, parallel=n, seed=1, encode=encode)


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_workload_programs_finish_well_formed_on_radixrt(name, radixrt_session, encode):
    figures = _run(name, radixrt_session, encode).figures
    assert figures["problems"] == []
    assert figures["ok_programs"] == figures["programs"] > 0
    # the recorded trace tokenizes exactly like the server did
    assert figures["trace_prompt_tokens"] == figures["prompt_tokens"] > 0
    assert 0.0 <= figures["cache_hit_rate"] <= figures["optimal_hit_rate"] + 0.02
    assert 0.0 < figures["server_busy"] <= 1.0  # the worker ran model steps for part of the wall time
    assert all(d is not None for d in figures["output_digests"])


# tree_of_thought (~30 s here: 39 sampled gens of 256 tokens) asks the transformers backend nothing that
# tip_suggestion and llm_judge do not: forks, sampling, stop strings
@pytest.mark.parametrize("name", [name for name in WORKLOADS if name != "tree_of_thought"])
def test_workload_programs_finish_well_formed_on_transformers(name, hf_session, encode):
    run = _run(name, hf_session, encode)  # multi_turn's check: exactly the asked tokens under ignore_eos
    assert run.figures["problems"] == []
    assert run.figures["ok_programs"] == run.figures["programs"] > 0
    assert run.figures["cache_hit_tokens"] == 0
    assert 0.0 < run.figures["server_busy"] <= 1.0
    assert all(o is not None for o in run.outputs)


def test_accuracy_is_measured_where_the_prompt_determines_the_answer(radixrt_session, encode):
    figures = _run("hellaswag", radixrt_session, encode).figures
    assert figures["accuracy"] in (0.0, 0.5, 1.0)
    assert "accuracy" not in _run("multi_turn", radixrt_session, encode).figures


def test_programs_run_alone_give_the_batch_outputs_and_a_latency_each(radixrt_session, encode):
    batched = run_workload(WORKLOADS["few_shot"], radixrt_session, num_programs=4, parallel=4, seed=1, encode=encode)
    alone = run_interactive(WORKLOADS["few_shot"], radixrt_session, num_programs=3, seed=1)
    assert alone.figures["programs"] == 3 and len(alone.figures["latencies_s"]) == 3
    assert alone.figures["latency_mean_s"] > 0
    assert alone.outputs == batched.outputs[:3]  # the same first programs, greedy


def test_one_at_a_time_gives_the_throughput_run_and_its_first_programs_as_the_latency_run(radixrt_session, encode):
    # what llama.cpp systems run: one pass, programs one after another
    run, alone = run_one_at_a_time(WORKLOADS["tip_suggestion"], radixrt_session, num_programs=3, interactive=2,
                                   seed=1, encode=encode)  # fmt: skip
    assert run.figures["programs"] == run.figures["ok_programs"] == 3 and run.figures["cache_hit_rate"] > 0
    separate = run_interactive(WORKLOADS["tip_suggestion"], radixrt_session, num_programs=2, seed=1)
    assert alone.outputs == separate.outputs == run.outputs[:2]  # greedy: the same first programs
    assert alone.figures["programs"] == 2 and len(alone.figures["latencies_s"]) == 2
    assert alone.figures["output_tokens"] == separate.figures["output_tokens"]  # its programs' calls only
    assert 0 < alone.figures["output_tokens"] < run.figures["output_tokens"]
    assert sum(alone.figures["latencies_s"]) < run.figures["wall_s"]


def test_batched_greedy_generation_matches_one_by_one(hf_session):
    backend = hf_session.backend
    prompts = ["The river", "A long time ago in a small village by the sea there lived"]
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    alone = [backend.generate(p, params).output_ids for p in prompts]
    jobs = [backend.batcher.submit(_gen_job(backend, p, params)) for p in prompts]
    together = [job.result()[0] for job in jobs]
    assert together == alone


def _gen_job(backend, prompt, params):
    from radixrt.bench.hf_batcher import GenJob
    from radixrt.bench.hf_control import RowSpec

    return GenJob(backend._encode(prompt), RowSpec(params))


def test_score_logprobs_match_a_plain_forward(hf_session):
    backend = hf_session.backend
    prefix, choices = "The color of the sky is", [" blue", " a deep shade of green"]
    result = backend.score(prefix, choices)
    for choice, scored in zip(choices, result.scores):
        ids = backend._encode(prefix + choice)
        with torch.inference_mode():
            logprobs = torch.log_softmax(backend.batcher.model(torch.tensor([ids])).logits[0].float(), -1)
        start = len(ids) - len(scored.logprobs)
        expected = [logprobs[j - 1, ids[j]].item() for j in range(start, len(ids))]
        assert scored.token_ids == ids[start:]
        assert scored.logprobs == pytest.approx(expected, abs=1e-4)


def test_optimal_hits_reuse_earlier_prompts_and_outputs():
    calls = [Call("gen", "a", output_ids=[9]), Call("gen", "b"), Call("gen", "c")]
    ids = {"a": [1, 2, 3], "b": [1, 2, 3, 9, 4], "c": [1, 2, 3]}
    trace = metrics.token_trace(calls, ids.__getitem__)
    # b reuses a's prompt and output (4 of 5); c would match all 3 but its last token is computed
    assert metrics.optimal_hits(trace) == (4 + 2, 3 + 5 + 3)


def test_percentile_interpolates():
    assert metrics.percentile([4.0, 1.0, 2.0, 3.0], 50) == 2.5
    assert metrics.percentile([1.0, 2.0], 99) == pytest.approx(1.99)


def test_micro_benchmarks_report_every_figure(bench_model_dir):
    from radixrt.bench.micro import run_micro

    micro = run_micro(str(bench_model_dir), dtype="float32", repeats=1)
    assert set(micro["decode_tokens_per_s"]) == {"1", "16", "64"}
    rates = [micro["prefill_tokens_per_s"], *micro["decode_tokens_per_s"].values(), micro["json_decode_tokens_per_s"],
             micro["json_nojump_decode_tokens_per_s"], micro["unconstrained_decode_tokens_per_s"]]  # fmt: skip
    assert all(r > 0 for r in rates)
    assert micro["json_mean_output_tokens"] >= 1
    int8 = micro["int8"]  # against a bf16 engine of the same round
    assert int8["rounds"] == 1 and set(int8["vs_bf16"]) == {"prefill", "decode_1", "decode_16"}
    assert int8["vs_bf16"]["decode_1"] == pytest.approx(
        int8["decode_tokens_per_s"]["1"] / int8["bf16_same_rounds"]["decode_1"]
    )
    assert int8["vs_bf16_range"]["prefill"] == [int8["vs_bf16"]["prefill"]] * 2


def test_transformers_micro_baseline_measures_the_same_figures_and_ratios(bench_model_dir):
    from radixrt.bench.micro_transformers import micro_ratios, run_micro_transformers
    from radixrt.bench.tables import markdown

    base = run_micro_transformers(str(bench_model_dir), dtype="float32", repeats=1)
    assert set(base["decode_tokens_per_s"]) == {"1", "16", "64"} and base["prefill_tokens_per_s"] > 0
    ours = {
        "prefill_tokens_per_s": 2 * base["prefill_tokens_per_s"],
        "decode_tokens_per_s": {b: r / 2 for b, r in base["decode_tokens_per_s"].items()},
    }
    ratios = micro_ratios(ours, base)
    assert ratios["prefill"] == pytest.approx(2.0) and ratios["decode_batch_64"] == pytest.approx(0.5)
    micro = {
        **ours,
        "json_batch": 8,
        "json_decode_tokens_per_s": 1.0,
        "json_nojump_decode_tokens_per_s": 1.0,
        "unconstrained_decode_tokens_per_s": 1.0,
        "transformers": base,
    }
    assert "| prefill, 1,024-token prompt |" in markdown({"workloads": {}, "micro": micro})
    assert "| 2.00x |" in markdown({"workloads": {}, "micro": micro})


def test_profile_prints_a_table_per_step(bench_model_dir, capsys):
    from radixrt.bench.profile import main as profile_main

    profile_main(["--model", str(bench_model_dir), "--dtype", "float32", "--rows", "3"])
    out = capsys.readouterr().out
    steps = ("prefill, 1,024 new tokens", "prefill, 8 x 128 new tokens after one shared 600-token prefix",
             "decode, batch 1, 64-token contexts", "decode, batch 16, 512-token contexts",
             "decode, batch 64, 64-token contexts", "decode, 32 requests of 300 tokens after one 1,000-token prefix")  # fmt: skip
    for step in steps:
        assert f"== {step}:" in out
    assert out.count("Self CPU time total") == len(steps)


def test_profile_refuses_an_unknown_quantization(capsys):
    from radixrt.bench.profile import main as profile_main

    with pytest.raises(SystemExit):
        profile_main(["--quantization", "q4"])
    assert "invalid choice: 'q4'" in capsys.readouterr().err


def test_cli_writes_json_plot_and_tables(bench_model_dir, tmp_path, capsys):
    out, plot, md = tmp_path / "out.json", tmp_path / "out.png", tmp_path / "out.md"
    code = main(["--workload", "few_shot,hellaswag", "--num-programs", "1", "--interactive", "1",
                 "--systems", "transformers", "--model", str(bench_model_dir), "--no-micro", "--json", str(out),
                 "--plot", str(plot), "--markdown", str(md)])  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    assert set(results) >= {"workloads", "machine", "settings", "skipped_systems"}
    entry = results["workloads"]["hellaswag"]
    assert (
        entry["systems"]["transformers"]["programs"] == 1 and entry["systems"]["transformers"]["optimal_hit_rate"] > 0.5
    )
    assert entry["interactive"]["transformers"]["programs"] == 1
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "[transformers] few_shot:" in capsys.readouterr().out
    assert "| hellaswag | transformers | 1 |" in md.read_text()


def test_llamacpp_systems_are_skipped_with_a_reason_without_llama_cpp_python():
    from radixrt.bench.systems import missing_systems

    missing = missing_systems(["radixrt", "llamacpp", "llamacpp-bf16", "transformers"], llama_cpp=False)
    assert set(missing) == {"llamacpp", "llamacpp-bf16"}
    assert "make bench" in missing["llamacpp"]
    assert missing_systems(["llamacpp"], llama_cpp=True) == {}


@pytest.mark.skipif(cpu_kernels.load() is None, reason="the C++ kernels did not build here: no fused path")
def test_fused_decode_bench_times_both_paths_and_checks_their_logits(bench_model_dir, tmp_path, capsys):
    from radixrt.bench import fused_decode

    out = tmp_path / "fused.json"
    fused_decode.main(["--model", str(bench_model_dir), "--quantization", "none,int8", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["quantization"], r["batch"]) for r in rows] == [
        (q, b) for q in ("none", "int8") for b in (1, 16, 64, 32)
    ]
    assert all(r["same_logits"] and r["fused_ms"] > 0 and r["modules_ms"] > 0 for r in rows)
    table = capsys.readouterr().out
    assert (
        table.count("| yes |") == 8
        and "| int8 | 64 (64) |" in table
        and "| bf16 | 32 (300, after 1,000 shared) |" in table
    )


def test_fused_decode_bench_refuses_an_unknown_quantization(capsys):
    from radixrt.bench import fused_decode

    with pytest.raises(SystemExit):
        fused_decode.main(["--quantization", "none,q4"])
    assert "unknown quantization ['q4']" in capsys.readouterr().err


def test_the_llamacpp_system_without_a_gguf_file_is_refused_before_anything_runs(bench_model_dir, capsys):
    with pytest.raises(SystemExit):
        main(["--workload", "none", "--systems", "radixrt,llamacpp", "--model", str(bench_model_dir)])
    assert "the llamacpp system needs --gguf FILE" in capsys.readouterr().err
