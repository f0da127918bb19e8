"""`python -m radixrt.bench.fused_decode`: decode steps through one C++ op over every decoder
layer (`decode_layers`, layers/fused_decode.py) against the same steps through the layer modules, on the
model runner alone: one runner per quantization, steps alternating between the two paths so that
both see the same machine (on a shared host memory bandwidth moves by a third within minutes),
median step times, and whether both paths gave the same logits bit for bit."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from radixrt.bench.profile import _decode
from radixrt.radix_cache.pool import KVPool
from radixrt.workers.layers.quantization import QUANTIZATIONS
from radixrt.workers.model_runner import ModelRunner
from radixrt.workers.model_store import resolve_model

# (batch, context tokens, tokens of it all requests share, steps per path); the last: many
# conversations after one system prompt, attended by shared_prefix_decode where it runs
CASES = [(1, 64, 0, 100), (16, 512, 0, 20), (64, 64, 0, 10), (32, 300, 1000, 10)]


def run(model: str, quantizations: list[str], cases: list[tuple[int, int, int, int]]) -> list[dict[str, Any]]:
    rows = []
    for quantization in quantizations:
        runner = ModelRunner(resolve_model(model), dtype="bfloat16", device="cpu", quantization=quantization)
        fused = runner.model.fused_decode
        if fused is None:
            raise SystemExit("the C++ kernels are not available here: no fused decode path to compare")
        pool = KVPool(70_000, *runner.kv_shape(), dtype=runner.dtype)
        for batch_size, context, shared, steps in cases:
            batch = _decode(batch_size, context, shared)
            seconds: dict[bool, list[float]] = {True: [], False: []}
            logits: dict[bool, torch.Tensor] = {}
            for _ in range(steps):
                for on in (True, False):
                    runner.model.fused_decode = fused if on else None
                    start = time.perf_counter()
                    logits[on] = runner.forward(batch, pool)
                    seconds[on].append(time.perf_counter() - start)
            runner.model.fused_decode = fused
            fused_ms, modules_ms = (statistics.median(seconds[on]) * 1e3 for on in (True, False))
            row = {"quantization": quantization, "batch": batch_size, "context": context, "shared_prefix": shared,
                   "steps": steps, "fused_ms": fused_ms, "modules_ms": modules_ms,
                   "same_logits": torch.equal(logits[True], logits[False])}  # fmt: skip
            print(f"[fused_decode] {quantization} batch {batch_size} (+{shared} shared): {fused_ms:.2f} ms fused, "
                  f"{modules_ms:.2f} ms modules ({modules_ms / fused_ms:.3f}x)", file=sys.stderr, flush=True)  # fmt: skip
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| weights | batch (context tokens) | step, one op per layer | step, layer modules | saved | speed-up | same logits |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        name = "bf16" if r["quantization"] == "none" else r["quantization"]
        saved = r["modules_ms"] - r["fused_ms"]
        shared = r.get("shared_prefix", 0)
        batch = f"{r['batch']} ({r.get('context', '?')}" + (f", after {shared:,} shared)" if shared else ")")
        lines.append(
            f"| {name} | {batch} | {r['fused_ms']:.2f} ms | {r['modules_ms']:.2f} ms | {saved:.2f} ms "
            f"| {r['modules_ms'] / r['fused_ms']:.2f}x | {'yes' if r['same_logits'] else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--quantization", default="none,int8,gguf", help="comma list of none, int8, gguf")
    parser.add_argument("--json", dest="json_out", help="write the rows here")
    args = parser.parse_args(argv)
    quantizations = [q.strip() for q in args.quantization.split(",") if q.strip()]
    unknown = [q for q in quantizations if q not in QUANTIZATIONS]
    if unknown or not quantizations:
        parser.error(f"unknown quantization {unknown or args.quantization!r}; choose from {', '.join(QUANTIZATIONS)}")
    rows = run(args.model, quantizations, CASES)
    if args.json_out:
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": torch.get_num_threads(), "model": args.model}
        Path(args.json_out).write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    print(markdown(rows))
    if not all(r["same_logits"] for r in rows):
        raise SystemExit("the fused decode path changed the logits")


if __name__ == "__main__":
    main()
