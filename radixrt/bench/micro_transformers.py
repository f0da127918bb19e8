"""The engine micro-benchmarks' baseline: the same prefill and decode measurements on
transformers (`AutoModelForCausalLM`, same weights, dtype and threads), run in this process."""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from radixrt.bench.micro import DECODE_BATCHES, PREFILL_TOKENS, decode_steps


def run_micro_transformers(
    model: str = "default", dtype: str = "bfloat16", repeats: int = 3, seed: int = 0
) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from radixrt.workers.model_store import resolve_model

    path = resolve_model(model)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    rng = random.Random(seed)
    vocab = hf.config.vocab_size

    def ids(rows: int, n: int) -> torch.Tensor:
        return torch.tensor([[rng.randrange(100, vocab) for _ in range(n)] for _ in range(rows)])

    with torch.inference_mode():
        hf(ids(1, 32), logits_to_keep=1)  # warm-up
        rates = []
        for _ in range(repeats):
            prompt = ids(1, PREFILL_TOKENS)
            start = time.perf_counter()
            hf(prompt, logits_to_keep=1)
            rates.append(PREFILL_TOKENS / (time.perf_counter() - start))
        decode = {str(b): statistics.median(_decode_rate(hf, ids(b, 16), b) for _ in range(repeats))
                  for b in DECODE_BATCHES}  # fmt: skip
    return {"prefill_tokens_per_s": statistics.median(rates), "decode_tokens_per_s": decode}


def _decode_rate(hf: Any, prompts: Any, batch: int) -> float:
    """Greedy `generate` of `decode_steps(batch)` forced tokens on equal-length prompts (no padding);
    the rate comes from the difference, so the prefill cancels out, as in radixrt's measurement."""
    times, lengths = [], decode_steps(batch)
    for steps in lengths:
        start = time.perf_counter()
        hf.generate(prompts, attention_mask=prompts.new_ones(prompts.shape), max_new_tokens=steps,
                    min_new_tokens=steps, do_sample=False, pad_token_id=0)  # fmt: skip
        times.append(time.perf_counter() - start)
    return batch * (lengths[1] - lengths[0]) / max(times[1] - times[0], 1e-9)


def micro_ratios(radixrt: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """radixrt tokens/s over transformers' for prefill and each decode batch."""
    out = {"prefill": radixrt["prefill_tokens_per_s"] / baseline["prefill_tokens_per_s"]}
    for b, rate in radixrt["decode_tokens_per_s"].items():
        out[f"decode_batch_{b}"] = rate / baseline["decode_tokens_per_s"][b]
    return out
