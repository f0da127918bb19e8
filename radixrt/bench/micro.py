"""Engine micro-benchmarks on `radixrt.Engine` (in this process): prefill and decode rates,
JSON-constrained decoding (with and without jump-forward) against unconstrained decoding of the
same length, and the same prefill and small-batch decode with weight-only int8 linears and with the
GGUF file's own quantized tensors (`--quantization gguf`)."""

from __future__ import annotations

import json
import random
import statistics
import time
from typing import Any

PREFILL_TOKENS = 1024
DECODE_BATCHES = (1, 16, 64)
QUANTIZED_DECODE_BATCHES = (1, 16)  # where weight bytes bound a step
# decode rate from the difference of two lengths (prefill cancels out); at small batches a longer
# difference, so that one measurement lasts ~1 s and a few slow steps of a shared machine weigh less
DECODE_STEPS = {1: (4, 132), 16: (4, 68), 64: (4, 36)}

JSON_BATCH = 8
KINDS = ["city", "town", "village"]
SCHEMA = {  # an enum, patterns, bounded integers and a nested object: jump-forward skips the fixed keys
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "[A-Z][a-z]{1,15}"},
        "kind": {"enum": KINDS},
        "location": {
            "type": "object",
            "properties": {
                "country": {"type": "string", "pattern": "[A-Z][a-z]{1,15}"},
                "coastal": {"type": "boolean"},
            },
            "required": ["country", "coastal"],
        },
        "population": {"type": "integer", "minimum": 0, "maximum": 9999999},
        "founded": {"type": "integer", "minimum": 800, "maximum": 2024},
    },
    "required": ["name", "kind", "location", "population", "founded"],
}
_JSON_PROMPTS = [
    f"Describe town number {i} as a JSON record with its name, kind, location and population.\n"
    for i in range(JSON_BATCH)
]


def decode_steps(batch: int) -> tuple[int, int]:
    return DECODE_STEPS.get(batch, DECODE_STEPS[max(DECODE_STEPS)])


def run_micro(model: str = "default", dtype: str = "bfloat16", repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Prefill tokens/s (1,024-token prompt), decode tokens/s at batch 1/16/64 (each the median of
    `repeats` measurements), JSON vs plain decode (and JSON with jump-forward off, on a second
    engine); and each quantization against bf16, in bf16 whatever `dtype` is."""
    rng = random.Random(seed)
    with _engine(model, dtype) as engine:
        vocab = engine.tm.vocab_size
        engine.generate(input_ids=_ids(rng, vocab, 32), sampling_params={"max_new_tokens": 2})  # warm-up
        results = {
            "prefill_tokens_per_s": _prefill(engine, rng, vocab, repeats),
            "decode_tokens_per_s": {str(b): _decode(engine, rng, vocab, b, repeats) for b in DECODE_BATCHES},
            "json_batch": JSON_BATCH,
        }
        tokens, results["json_decode_tokens_per_s"] = _json_rate(engine)
        results["json_mean_output_tokens"] = tokens / JSON_BATCH
        results["unconstrained_decode_tokens_per_s"] = _plain_rate(engine, max(1, round(tokens / JSON_BATCH)))
    with _engine(model, dtype, disable_jump_forward=True) as engine:
        results["json_nojump_decode_tokens_per_s"] = _json_rate(engine)[1]
    results.update(_quantized(model, "bfloat16", rng, vocab, repeats))
    return results


def _quantized(model: str, dtype: str, rng: random.Random, vocab: int, rounds: int) -> dict[str, Any]:
    """Each quantization's prefill and decode against bf16 measured in the same round: a round runs
    a bf16 engine, then one engine per quantization, each measured once; a ratio is the median of
    the rounds' ratios, with their range. (Two engines alive in one process would slow each other:
    two OpenMP pools; rounds keep a machine's drift over minutes out of the ratios.)"""
    modes = ("none", *_quantizations(model))
    rates: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode in modes:
            with _engine(model, dtype, quantization=mode) as engine:
                engine.generate(input_ids=_ids(rng, vocab, 32), sampling_params={"max_new_tokens": 2})  # warm-up
                measured = {"prefill": _prefill(engine, rng, vocab, 1)}
                measured |= {f"decode_{b}": _decode(engine, rng, vocab, b, 1) for b in QUANTIZED_DECODE_BATCHES}
                rates[mode].append(measured)
    results = {}
    for mode in modes[1:]:
        per_round = {k: [q[k] / b[k] for q, b in zip(rates[mode], rates["none"])] for k in rates[mode][0]}
        median = lambda k, of=rates[mode]: statistics.median(r[k] for r in of)  # noqa: E731
        results[mode] = {
            "rounds": rounds,
            "prefill_tokens_per_s": median("prefill"),
            "decode_tokens_per_s": {str(b): median(f"decode_{b}") for b in QUANTIZED_DECODE_BATCHES},
            "bf16_same_rounds": {k: median(k, rates["none"]) for k in rates["none"][0]},
            "vs_bf16": {k: statistics.median(v) for k, v in per_round.items()},
            "vs_bf16_range": {k: [min(v), max(v)] for k, v in per_round.items()},
        }
    return results


def _quantizations(model: str) -> tuple[str, ...]:
    """int8, and gguf where the model folder was imported from a GGUF file."""
    from radixrt.workers.gguf_weights import source_gguf
    from radixrt.workers.model_store import resolve_model

    try:
        source_gguf(resolve_model(model))
    except ValueError:
        return ("int8",)
    return ("int8", "gguf")


def _engine(model: str, dtype: str, **overrides: Any) -> Any:
    import radixrt

    return radixrt.Engine(model, dtype=dtype, device="cpu", kv_slots=65536, max_running_requests=64,
                          log_level="warning", **overrides)  # fmt: skip


def _ids(rng: random.Random, vocab: int, n: int) -> list[int]:
    return [rng.randrange(100, vocab) for _ in range(n)]


def _prefill(engine: Any, rng: random.Random, vocab: int, repeats: int) -> float:
    """Median over `repeats` fresh (uncached) 1,024-token prompts, one output token each."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.generate(input_ids=_ids(rng, vocab, PREFILL_TOKENS), sampling_params={"max_new_tokens": 1})
        rates.append(PREFILL_TOKENS / (time.perf_counter() - start))
    return statistics.median(rates)


def _decode(engine: Any, rng: random.Random, vocab: int, batch: int, repeats: int) -> float:
    """Median over `repeats` pairs of runs of `decode_steps(batch)` tokens: the rate comes from each
    pair's difference, so the prefill cancels out."""
    rates, lengths = [], decode_steps(batch)
    for _ in range(repeats):
        times = []
        for steps in lengths:
            prompts = [_ids(rng, vocab, 16) for _ in range(batch)]
            params = {"max_new_tokens": steps, "ignore_eos": True, "temperature": 0.0}
            start = time.perf_counter()
            engine.generate(input_ids=prompts, sampling_params=params)
            times.append(time.perf_counter() - start)
        rates.append(batch * (lengths[1] - lengths[0]) / max(times[1] - times[0], 1e-9))
    return statistics.median(rates)


def _json_rate(engine: Any) -> tuple[int, float]:
    """(output tokens, output tokens/s) of JSON_BATCH schema-constrained requests at once; the
    grammar is compiled (and the engine warmed) before timing. Jump-forward tokens count as output."""
    constrained = {"max_new_tokens": 96, "temperature": 0.0, "json_schema": _schema_text()}
    engine.generate(prompt=_JSON_PROMPTS[:1], sampling_params=constrained)
    engine.flush_cache()
    start = time.perf_counter()
    outs = engine.generate(prompt=_JSON_PROMPTS, sampling_params=constrained)
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return tokens, tokens / (time.perf_counter() - start)


def _plain_rate(engine: Any, length: int) -> float:
    """Output tokens/s of the same prompts unconstrained, forced (ignore_eos) to `length` tokens."""
    engine.flush_cache()
    start = time.perf_counter()
    outs = engine.generate(prompt=_JSON_PROMPTS, sampling_params={"max_new_tokens": length, "temperature": 0.0,
                                                                  "ignore_eos": True})  # fmt: skip
    return sum(o["meta_info"]["completion_tokens"] for o in outs) / (time.perf_counter() - start)


def _schema_text() -> str:
    return json.dumps(SCHEMA)
