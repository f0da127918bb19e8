"""The engine micro-benchmarks' llama.cpp peer: prefill of a 1,024-token prompt and decode at batch 1
on llama-cpp-python as its users run it (one `Llama`, one sequence, `n_batch` 512, the machine's
threads), on the GGUF file the `llamacpp` system runs (the embedded model's own Q4_1 file). Decode is
measured as radixrt's is: two greedy generations of different lengths after a 16-token prompt, the
rate from their difference (the prefill cancels out)."""

from __future__ import annotations

import itertools
import random
import statistics
import time
from pathlib import Path
from typing import Any

from radixrt.bench.micro import PREFILL_TOKENS, decode_steps


def run_micro_llamacpp(gguf: str | Path, n_threads: int, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf), n_ctx=PREFILL_TOKENS + 256, n_threads=n_threads, n_threads_batch=n_threads,
                          verbose=False)  # fmt: skip
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(100, llm.n_vocab()) for _ in range(n)]

    llm.eval(ids(32))  # warm-up
    prefill = []
    for _ in range(repeats):
        llm.reset()
        prompt = ids(PREFILL_TOKENS)
        start = time.perf_counter()
        llm.eval(prompt)
        prefill.append(PREFILL_TOKENS / (time.perf_counter() - start))
    decode = statistics.median(_decode_rate(llm, ids(16)) for _ in range(repeats))
    return {"gguf": Path(gguf).name, "prefill_tokens_per_s": statistics.median(prefill),
            "decode_tokens_per_s": {"1": decode}}  # fmt: skip


def _decode_rate(llm: Any, prompt: list[int]) -> float:
    times, lengths = [], decode_steps(1)
    for steps in lengths:
        llm.reset()
        start = time.perf_counter()
        # NOTE: Llama.generate never stops by itself (end-of-text is its callers' check), like ignore_eos
        tokens = list(itertools.islice(llm.generate(prompt, temp=0.0), steps))
        times.append(time.perf_counter() - start)
        if len(tokens) != steps:
            raise RuntimeError(f"llama.cpp generated {len(tokens)} tokens where {steps} were asked for")
    return (lengths[1] - lengths[0]) / max(times[1] - times[0], 1e-9)


def llamacpp_ratios(micro: dict[str, Any], llama: dict[str, Any]) -> dict[str, float]:
    """radixrt tokens/s over llama.cpp's: prefill and batch-1 decode in bf16, and with int8 and gguf
    weights where the run measured them."""
    out = {
        "prefill": micro["prefill_tokens_per_s"] / llama["prefill_tokens_per_s"],
        "decode_batch_1": micro["decode_tokens_per_s"]["1"] / llama["decode_tokens_per_s"]["1"],
    }
    for mode in ("int8", "gguf"):
        if mode in micro:
            out[f"{mode}_prefill"] = micro[mode]["prefill_tokens_per_s"] / llama["prefill_tokens_per_s"]
            out[f"{mode}_decode_batch_1"] = micro[mode]["decode_tokens_per_s"]["1"] / llama["decode_tokens_per_s"]["1"]
    return out
