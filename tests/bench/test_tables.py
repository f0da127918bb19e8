"""BENCHMARKS.md's tables come from a results JSON: every figure printed is the JSON's, every
table names its machine, targets are judged from the ratios, and `--into` replaces only the
generated block of a Markdown file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radixrt.bench import report
from radixrt.bench.crosscheck import crosscheck
from radixrt.bench.tables import BEGIN, END, across_runs, machine_line, main, markdown, replace_between_markers

REPO = Path(__file__).resolve().parents[2]


def _figures(prog_s: float, latency: float, hit: float = 0.0, accuracy: float | None = None) -> dict:
    return {"programs": 4, "wall_s": 4 / prog_s, "programs_per_s": prog_s, "output_tokens": 40,
            "output_tokens_per_s": 40 * prog_s / 4, "latency_p50_s": latency, "latency_p99_s": latency * 1.5,
            "cache_hit_rate": hit, "optimal_hit_rate": 0.9, "server_busy": 0.95, "ok_programs": 4, "problems": [],
            "accuracy": accuracy}  # fmt: skip


def _alone(mean: float) -> dict:
    return {"programs": 2, "latency_mean_s": mean, "latency_p50_s": mean, "latencies_s": [mean, mean]}


@pytest.fixture
def results() -> dict:
    systems = {"radixrt": _figures(2.0, 1.0, hit=0.9, accuracy=0.75), "radixrt-nocache": _figures(0.5, 4.0, accuracy=0.75),
               "transformers": _figures(0.1, 30.0, accuracy=0.5), "llamacpp": _figures(1.0, 2.0, hit=0.5, accuracy=0.5)}  # fmt: skip
    interactive = {"radixrt": _alone(0.8), "llamacpp": _alone(0.4)}
    same, other = [{"answer": " A"}] * 4, [{"answer": " A"}] * 3 + [{"answer": " B"}]
    check = crosscheck({"radixrt": same, "radixrt-nocache": same, "transformers": other, "llamacpp": same}, greedy=True)
    entry = {"greedy": True, "systems": systems, "interactive": interactive, "crosscheck": check,
             "ratios": report.ratios(systems, interactive)}  # fmt: skip
    machine = {"cpu": "Test CPU 9000", "cores": 2, "isa": ["avx2", "avx512_bf16"], "torch_threads": 2,
               "date_utc": "2026-12-05T00:00:00+00:00", "llama_cpp_python": "0.3.36", "llama_cpp_build": "AVX2 AVX512"}  # fmt: skip
    return {"workloads": {"few_shot": entry}, "machine": machine, "settings": {"quick": True, "seed": 0}}


def test_every_table_is_headed_by_the_machine(results):
    text = markdown(results, source="benchmarks/results/x.json")
    caption = machine_line(results, "benchmarks/results/x.json")
    assert "Test CPU 9000" in caption and "avx512_bf16" in caption and "2 threads" in caption
    assert "llama-cpp-python 0.3.36" in caption and "benchmarks/results/x.json" in caption
    assert text.count("#### ") == text.count(caption) == 5  # no micro-benchmarks in these results
    assert "float32" not in caption  # bf16, the default, goes unsaid; another dtype is said
    results["settings"]["dtype"] = "float32"
    assert "--quick, float32, seed 0" in machine_line(results)
    # CPUs sold under one name are told apart by their family and model numbers, where recorded
    assert "(family" not in caption
    results["machine"]["cpu_id"] = "family 26, model 2, stepping 1"
    assert machine_line(results).startswith("*Test CPU 9000 (family 26, model 2, stepping 1), 2 cores")


def test_figures_and_ratios_are_the_jsons(results):
    text = markdown(results)
    assert "| few_shot | radixrt | 4 | 2.000 | 20.0 | 1.00 | 1.50 | 90% | 90% | 95% | 75% | 4/4 |" in text
    assert "| few_shot | transformers | 20.00x | 20.00x | 30.00x | 30.00x | - |" in text  # ratios table
    assert "| few_shot | llamacpp | 2 | 0.40 | 0.40 | 0.50x |" in text  # one program at a time: llama.cpp faster
    assert "| few_shot | transformers | 3/4 | 75% | 50% (75%) | program 3, `answer`:" in text


def test_targets_say_what_was_met_and_by_how_much_one_was_missed(results):
    text = markdown(results)
    assert "| few_shot | prog/s vs transformers | 8 | 20.00 | met |" in text
    assert "| few_shot | prog/s vs radixrt-nocache | 5 | 4.00 | missed by 20% |" in text
    assert "| few_shot | prog/s vs llamacpp | 3 | 2.00 | missed by 33% |" in text
    assert "| few_shot | 1-program latency vs llamacpp | 1 | 0.50 | missed by 50% |" in text
    assert "| few_shot | hit rate / optimal | 0.95 | 1.00 | met |" in text


def test_into_replaces_only_the_generated_block(results, tmp_path):
    path, doc = tmp_path / "results.json", tmp_path / "BENCH.md"
    path.write_text(json.dumps(results))
    doc.write_text(f"# Title\n\nprose before\n\n{BEGIN}\nold tables\n{END}\n\nprose after\n")
    main([str(path), "--into", str(doc)])
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose before\n\n" + BEGIN + "\n#### Throughput")
    assert "old tables" not in text and text.endswith(END + "\n\nprose after\n")
    with pytest.raises(ValueError, match="no .* block"):
        replace_between_markers("no markers here", "tables")


def test_against_gives_one_row_per_workload_of_every_run_from_its_own_ratios(results, tmp_path):
    second = json.loads(json.dumps(results))  # another run: hellaswag, 4x llama.cpp, and no llama.cpp at all
    entry = second["workloads"].pop("few_shot")
    entry["systems"]["radixrt"]["programs_per_s"] = 4.0
    entry["ratios"] = report.ratios(entry["systems"], entry["interactive"])
    second["workloads"]["hellaswag"] = entry
    second["machine"]["date_utc"] = "2026-12-06T00:00:00+00:00"
    third = json.loads(json.dumps(results))
    third["workloads"]["few_shot"]["ratios"].pop("llamacpp")
    text = across_runs([(results, "a.json"), (second, "b.json"), (third, "c.json")], "llamacpp")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == [
        "| hellaswag | 4.00x | met | 0.50x | `b.json` |",  # highest ratio first
        "| few_shot | 2.00x | missed by 33% | 0.50x | `a.json` |",
    ]
    assert text.count("Test CPU 9000") == 2 and "2026-12-06T00:00:00" in text  # each run's machine, once
    paths = []
    for name, run in (("a.json", results), ("b.json", second)):
        paths.append(str(tmp_path / name))
        Path(paths[-1]).write_text(json.dumps(run))
    printed = []
    main([*paths, "--against", "llamacpp"], out=printed.append)
    assert "| hellaswag | 4.00x | met |" in printed[0]
    with pytest.raises(SystemExit):  # several files and no --against: which table would it be?
        main(paths, out=printed.append)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--against", "llama.cpp"], "no run given measured radixrt against 'llama.cpp'; these did against: llamacpp"),
        (["--against", "llamacpp", "--into", "BENCH.md"], "--against prints its table"),
    ],
)
def test_against_with_a_system_no_run_measured_or_with_into_is_refused(results, tmp_path, capsys, args, message):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(results))
    (tmp_path / "BENCH.md").write_text(f"{BEGIN}\nkept\n{END}\n")
    printed = []
    with pytest.raises(SystemExit):
        main([str(path), *[str(tmp_path / a) if a.endswith(".md") else a for a in args]], out=printed.append)
    assert message in capsys.readouterr().err and not printed
    assert "kept" in (tmp_path / "BENCH.md").read_text()  # nothing written


def test_benchmarks_md_has_a_generated_block():
    replace_between_markers((REPO / "BENCHMARKS.md").read_text(), "tables")


def test_speculation_shows_acceptance_and_its_ratios_against_radixrt_nospec():
    spec = {"spec_draft_tokens": 200, "spec_accepted_tokens": 150, "spec_acceptance": 0.75}
    systems = {"radixrt": {**_figures(2.0, 1.0), **spec}, "radixrt-nospec": _figures(1.0, 2.0)}
    interactive = {"radixrt": {**_alone(0.5), "output_tokens_per_s": 30.0, **spec},
                   "radixrt-nospec": {**_alone(1.0), "output_tokens_per_s": 15.0}}  # fmt: skip
    entry = {"greedy": True, "systems": systems, "interactive": interactive,
             "crosscheck": crosscheck({"radixrt": [], "radixrt-nospec": []}, greedy=True),
             "ratios": report.ratios(systems, interactive)}  # fmt: skip
    text = markdown({"workloads": {"rag_quote": entry}, "machine": {}, "settings": {}})
    assert "| rag_quote | 75% (150/200) | 75% (150/200) | 2.00x | 2.00x |" in text
    assert "| rag_quote | out tok/s vs radixrt-nospec | 1.2 | 2.00 | met |" in text
    assert "| rag_quote | 1-program out tok/s vs radixrt-nospec | 1.5 | 2.00 | met |" in text


def test_quantized_table_gives_the_ratios_of_the_same_rounds(results):
    results["micro"] = {
        "prefill_tokens_per_s": 900.0,  # an earlier bf16 engine's: not what int8 is compared with
        "decode_tokens_per_s": {"1": 50.0, "16": 400.0, "64": 900.0},
        "json_batch": 8,
        "json_decode_tokens_per_s": 300.0,
        "json_nojump_decode_tokens_per_s": 200.0,
        "unconstrained_decode_tokens_per_s": 250.0,
        "int8": {
            "rounds": 3,
            "prefill_tokens_per_s": 600.0,
            "decode_tokens_per_s": {"1": 120.0, "16": 500.0},
            "bf16_same_rounds": {"prefill": 700.0, "decode_1": 80.0, "decode_16": 420.0},
            "vs_bf16": {"prefill": 0.86, "decode_1": 1.52, "decode_16": 1.19},
            "vs_bf16_range": {"prefill": [0.8, 0.9], "decode_1": [1.41, 1.66], "decode_16": [1.1, 1.3]},
        },
    }
    text = markdown(results)
    assert "| engine micro-benchmark (3 rounds) | int8 tokens/s | bf16 tokens/s | ratio (range) |" in text
    assert "#### Throughput" in text and "#### Throughput" not in markdown({**results, "workloads": {}})
    assert "| decode, batch 1 | 120 | 80 | 1.52x (1.41-1.66) |" in text
    assert "| prefill, 1,024-token prompt | 600 | 700 | 0.86x (0.80-0.90) |" in text


def test_llamacpp_table_compares_each_weight_format_with_llama_cpp(results):
    results["micro"] = {
        "prefill_tokens_per_s": 1000.0,
        "decode_tokens_per_s": {"1": 80.0, "16": 400.0, "64": 900.0},
        "json_batch": 8,
        "json_decode_tokens_per_s": 300.0,
        "json_nojump_decode_tokens_per_s": 200.0,
        "unconstrained_decode_tokens_per_s": 250.0,
        "int8": {"prefill_tokens_per_s": 900.0, "decode_tokens_per_s": {"1": 120.0, "16": 500.0}},
        "llamacpp": {"gguf": "model.Q4_1.gguf", "prefill_tokens_per_s": 500.0, "decode_tokens_per_s": {"1": 60.0}},
    }
    text = markdown(results)
    assert "#### radixrt against llama.cpp on its GGUF file (same run)" in text
    header = "| engine micro-benchmark | llama.cpp tokens/s (model.Q4_1.gguf) | radixrt bf16 tokens/s | ratio | radixrt int8 tokens/s | ratio |"
    assert header in text
    assert "| prefill, 1,024-token prompt | 500 | 1000 | 2.00x | 900 | 1.80x |" in text
    assert "| decode, batch 1 | 60 | 80 | 1.33x | 120 | 2.00x |" in text
    del results["micro"]["llamacpp"]
    assert "llama.cpp on its GGUF file" not in markdown(results)


def test_llamacpp_ratios_are_radixrts_rates_over_llama_cpps():
    from radixrt.bench.micro_llamacpp import llamacpp_ratios

    micro = {"prefill_tokens_per_s": 1000.0, "decode_tokens_per_s": {"1": 90.0, "16": 700.0},
             "gguf": {"prefill_tokens_per_s": 750.0, "decode_tokens_per_s": {"1": 150.0, "16": 800.0}}}  # fmt: skip
    llama = {"prefill_tokens_per_s": 500.0, "decode_tokens_per_s": {"1": 60.0}}
    assert llamacpp_ratios(micro, llama) == {"prefill": 2.0, "decode_batch_1": 1.5, "gguf_prefill": 1.5,
                                             "gguf_decode_batch_1": 2.5}  # fmt: skip


def test_a_gpu_run_names_the_gpu_and_the_host(results):
    results["settings"]["device"] = "cuda"
    results["machine"]["gpu"] = "NVIDIA H100 80GB HBM3"
    assert machine_line(results).startswith("*NVIDIA H100 80GB HBM3 (radixrt and transformers), host Test CPU 9000")
