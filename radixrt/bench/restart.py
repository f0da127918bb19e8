"""`python -m radixrt.bench.restart`: time to the first token of a request sharing a long prompt,
cold vs after a restart with `--cache-dir`, on the in-process Engine (the same scheduler and
model as `radixrt serve`).

    first engine:  warm-up, then cold TTFT of SYSTEM + question 0 (median over --trials, cache
                   flushed before each); then SYSTEM + question 1 fills the cache; shutdown saves it
    second engine: loads the snapshot at start; warm-up with an unrelated prompt (cold, then
                   hitting itself, so both code paths ran once); TTFT of
                   SYSTEM + question 0 (the first request sharing the prompt), then of other questions

Also: start-up load time, shutdown save time, snapshot size, whether the restarted greedy output
equals the cold one, and a periodic save's cost to decoding (the scheduler thread's longest
step in a save, and output tokens/s of a request decoding while saves run vs with none).
Prints JSON (also written to --json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import radixrt
from radixrt.bench.report import machine_info
from radixrt.radix_cache.snapshot_file import SUFFIX


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(1000, 40_000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class _Timed:
    """One greedy request streamed: time to its first token, to its last, its output and cache hit."""

    def __init__(self, engine: radixrt.Engine, ids: list[int], max_new_tokens: int = 8):
        params = {"temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": True}
        start = time.perf_counter()
        self.ttft, meta = 0.0, {}
        for chunk in engine.generate(input_ids=ids, sampling_params=params, stream=True):
            self.ttft = self.ttft or time.perf_counter() - start
            self.output_ids, meta = chunk["output_ids"], chunk["meta_info"]
        self.total = time.perf_counter() - start
        self.cached = meta.get("cached_tokens", 0)
        self.decode_rate = (max_new_tokens - 1) / max(self.total - self.ttft, 1e-9)


def run(args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    system = _ids(args.prompt_tokens, seed=1)
    questions = [_ids(24, seed=100 + i) for i in range(args.trials + 1)]
    engine_args = {"model": args.model, "kv_slots": args.kv_slots, "cache_dir": str(cache_dir)}

    engine = radixrt.Engine(**engine_args)
    _Timed(engine, _ids(args.prompt_tokens, seed=2))  # kernels and their tuning warm
    cold = []
    for _ in range(args.trials):
        engine.flush_cache()
        cold.append(_Timed(engine, system + questions[0]))
        assert cold[-1].cached == 0
    engine.flush_cache()
    _Timed(engine, system + questions[1])
    start = time.perf_counter()
    engine.shutdown()
    save_s = time.perf_counter() - start

    start = time.perf_counter()
    engine = radixrt.Engine(**engine_args, cache_save_interval=0.01)
    start_s = time.perf_counter() - start
    loaded = engine.stats()
    engine.scheduler.persistence.interval_s = 0  # no saves while TTFT is measured
    unrelated = _ids(args.prompt_tokens, seed=3)
    _Timed(engine, unrelated)  # warm: a cold prefill, then an extend over a cached long prefix
    _Timed(engine, unrelated + questions[0])
    first = _Timed(engine, system + questions[0])
    warm = [_Timed(engine, system + q).ttft for q in questions[2:]]

    engine.flush_cache()
    quiet = _Timed(engine, system + questions[1], args.decode_tokens)
    engine.flush_cache()
    engine.scheduler.persistence.interval_s = 0.01  # a save starts once the prompt is in the tree
    saving = _Timed(engine, system + questions[1], args.decode_tokens)
    saved = engine.stats()
    engine.shutdown()

    (snapshot,) = cache_dir.glob(f"*{SUFFIX}")
    cold_s = statistics.median(c.ttft for c in cold)
    return {
        "benchmark": "restart",
        "model": args.model,
        "prompt_tokens": args.prompt_tokens,
        "cold_ttft_s": [round(c.ttft, 4) for c in cold],
        "cold_ttft_median_s": round(cold_s, 4),
        "restart_first_ttft_s": round(first.ttft, 4),
        "restart_first_cached_tokens": first.cached,
        "restart_ttft_s": [round(s, 4) for s in warm],
        "ttft_ratio_first": round(cold_s / first.ttft, 2),
        "ttft_ratio_median": round(cold_s / statistics.median(warm), 2) if warm else None,
        "restart_greedy_equals_cold": first.output_ids == cold[0].output_ids,
        "snapshot_mb": round(snapshot.stat().st_size / 1e6, 2),
        "shutdown_save_s": round(save_s, 3),
        "restart_start_s": round(start_s, 3),
        "load_s": loaded["cache_load_s"],
        "loaded_tokens": loaded["cache_loaded_tokens"],
        "periodic_saves": saved["cache_saves"],
        "periodic_save_max_step_ms": round(saved["cache_save_max_step_ms"], 2),
        "decode_tokens_per_s_no_save": round(quiet.decode_rate, 1),
        "decode_tokens_per_s_saving": round(saving.decode_rate, 1),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--prompt-tokens", type=int, default=2000)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--kv-slots", type=int, default=8192)
    p.add_argument("--decode-tokens", type=int, default=128, help="output tokens of the periodic-save request")
    p.add_argument("--json", dest="json_out", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="radixrt-restart-") as tmp:
        result = run(args, Path(tmp))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")


if __name__ == "__main__":
    main()
