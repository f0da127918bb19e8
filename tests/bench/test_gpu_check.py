"""`make gpu-check`'s measurements run end to end on the CPU, with `EagerGraph` for CUDA graphs and a
tiny shape, so that a lent GPU's minutes go to measuring, not to fixing the script."""

from __future__ import annotations

from radixrt.bench import gpu_check
from radixrt.workers.decode_graphs import EagerGraph

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512, "rope_theta": 10000.0, "tie_word_embeddings": False}  # fmt: skip


def test_decode_and_prefill_rows_and_their_table(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "CONTEXT", 24)
    monkeypatch.setattr(gpu_check, "STEPS", 4)
    monkeypatch.setattr(gpu_check, "PREFILL_TOKENS", 64)
    reported = []
    rows = gpu_check.measure_decode("llama3-8b", TINY, (1, 3), 10.0, tmp_path, reported.append, device="cpu",
                                    new_graph=EagerGraph)  # fmt: skip
    decode, prefill = rows[:2], rows[2]
    assert [r["batch"] for r in decode] == [1, 3] and len(reported) == 3
    assert all(r["eager_tokens_per_s"] > 0 and r["graph_tokens_per_s"] > 0 for r in decode)
    # batch 1's bound: the untied model's weights but its embedding, and its K/V, at 10 GB/s
    params = 2 * (64 * 512 + 2 * (64 * (64 + 2 * 32) + 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64)
    kv = 2 * 2 * 2 * 16 * 2 * (24 + 4)  # K and V, 2 layers, 2 kv heads of 16 dims, bf16
    assert abs(decode[0]["bound_tokens_per_s"] - 10e9 / (params + kv)) < 1e-6 * decode[0]["bound_tokens_per_s"]
    assert "bound_tokens_per_s" not in decode[1]
    assert prefill["prefill_tokens"] == 64 and prefill["prefill_tokens_per_s"] > 0
    table = gpu_check.markdown({"device": "cpu", "rows": rows, "tests": {"summary": "3 passed"}})
    assert "GPU tests: 3 passed" in table
    assert "| llama3-8b | 3 |" in table and "Prefill, llama3-8b, one 64-token prompt" in table
    failed = gpu_check.markdown({"rows": [], "errors": {"smollm2-135m": "Traceback (...)\nValueError: no kernel"}})
    assert "smollm2-135m failed: `ValueError: no kernel`" in failed


def test_the_workloads_part_runs_the_bench_on_a_random_model_with_the_exported_tokenizer(tmp_path):
    gpu_check.export_tokenizer(tmp_path / "tokenizer")
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()
    shape = {**TINY, "vocab_size": 49152, "tie_word_embeddings": True}
    args = ("--workload", "few_shot", "--num-programs", "2", "--interactive", "0")  # one-token answers: quick
    result = gpu_check.run_workloads(
        tmp_path / "tokenizer", tmp_path, tmp_path, device="cpu", shape=shape, bench_args=args
    )
    assert result["returncode"] == 0, result
    assert result["ratios"] and result["ratios"][0].startswith("[ratio] few_shot programs/s transformers: ")
    assert "few_shot" in (tmp_path / "workloads.md").read_text()
