"""`python -m radixrt.bench.profile`: where one forward's time goes (torch.profiler), for a
prefill of 1,024 new tokens, 8 prompts of 128 new tokens after one shared 600-token prefix
(few_shot's questions after their subject's examples), decode steps at batch 1, 16 and 64, and a decode step of 32
requests after one shared 1,000-token prefix, on the model runner alone."""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from radixrt.radix_cache.pool import KVPool
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers.quantization import QUANTIZATIONS
from radixrt.workers.model_runner import ModelRunner
from radixrt.workers.model_store import resolve_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--quantization", default="none", choices=QUANTIZATIONS)
    parser.add_argument("--rows", type=int, default=8, help="profiler table rows per step")
    args = parser.parse_args(argv)
    runner = ModelRunner(resolve_model(args.model), dtype=args.dtype, device="cpu", quantization=args.quantization)
    pool = KVPool(70_000, *runner.kv_shape(), dtype=runner.dtype)
    steps = {"prefill, 1,024 new tokens": _prefill(1, 1024),
             "prefill, 8 x 128 new tokens after one shared 600-token prefix": _prefill(8, 128, shared=600),
             "decode, batch 1, 64-token contexts": _decode(1, 64),
             "decode, batch 16, 512-token contexts": _decode(16, 512),
             "decode, batch 64, 64-token contexts": _decode(64, 64),
             "decode, 32 requests of 300 tokens after one 1,000-token prefix": _decode(32, 300, shared=1000)}  # fmt: skip
    for name, batch in steps.items():
        for _ in range(2):
            runner.forward(batch, pool)  # warm-up
        start = time.perf_counter()
        runner.forward(batch, pool)
        elapsed = time.perf_counter() - start
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            runner.forward(batch, pool)
        print(f"\n== {name}: {elapsed * 1e3:.1f} ms ({batch.num_tokens / elapsed:.0f} tokens/s)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


def _prefill(batch: int, n: int, shared: int = 0) -> ForwardBatch:
    prefix = list(range(1, 1 + shared))
    slots = [prefix + list(range(1 + shared + i * n, 1 + shared + (i + 1) * n)) for i in range(batch)]
    return ForwardBatch.build([torch.randint(100, 20_000, (n,)).tolist() for _ in range(batch)], slots)


def _decode(batch: int, context: int, shared: int = 0) -> ForwardBatch:
    prefix = list(range(1, 1 + shared))
    slots = [prefix + list(range(1 + shared + i * context, 1 + shared + (i + 1) * context)) for i in range(batch)]
    return ForwardBatch.build([[5]] * batch, slots)


if __name__ == "__main__":
    main()
