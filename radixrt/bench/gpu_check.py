"""`python -m radixrt.bench.gpu_check` (`make gpu-check`): what a lent GPU machine checks and measures.

1. The GPU tests (`pytest -m gpu`): flashinfer against the torch backend, logits against
   transformers on tiny random configs of each architecture, CUDA-graph replays against eager
   steps, grammar masks and sampling on device logits.
2. Decode at Llama-3-8B's shapes with random weights (`load_format="dummy"`, nothing to download):
   tokens/s at batch 1, 16, 64 and 256 over 512-token contexts, eager and replayed from CUDA graphs,
   beside batch 1's bound (the weights a step reads over the copy bandwidth measured here); and
   prefill tokens/s of one 4,096-token prompt.
3. Batch-1 decode at SmolLM2-135M's shapes (the embedded model's), where launching a step's kernels,
   not reading its bytes, is the cost that CUDA graphs remove.
4. The agentic workloads (`python -m radixrt.bench --quick --device cuda`) on radixrt and
   transformers on this GPU, on a random-weight model of SmolLM2-135M's shape with the embedded
   model's tokenizer (carried in .whl/tokenizer: `--export-tokenizer` writes it on a machine that
   has the embedded model). Random weights decode every output to its length limit.

Each step is timed on the model runner, as the engine runs it: the batch built on the host, the
forward, the argmax copied back. Results go to `--out`/gpu-check.json after every part, so a run cut
short keeps what it measured, and to gpu-check.md as a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0, "tie_word_embeddings": False}  # fmt: skip
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152, "rope_theta": 100000.0, "tie_word_embeddings": True}  # fmt: skip
DECODE_BATCHES = (1, 16, 64, 256)
CONTEXT = 512
STEPS = 32
PREFILL_TOKENS = 4096


def write_config(folder: Path, shape: dict[str, Any]) -> Path:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "rms_norm_eps": 1e-5,
              "max_position_embeddings": 8192, "torch_dtype": "bfloat16", "eos_token_id": 2, **shape}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy, bytes read plus written per second."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * nbytes * 10 / (time.perf_counter() - start) / 1e9


def decode_weight_bytes(cfg: Any, element_size: int) -> int:
    """The weights one decode step reads: every layer's, the final norm and the LM head (of the
    embedding only the batch's rows, left out)."""
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    attention = cfg.hidden_size * (q + 2 * kv) + q * cfg.hidden_size + (q + 2 * kv) * cfg.attention_bias
    layer = attention + 3 * cfg.hidden_size * cfg.intermediate_size + 2 * cfg.hidden_size
    return element_size * (cfg.num_hidden_layers * layer + cfg.hidden_size + cfg.vocab_size * cfg.hidden_size)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


class Sequences:
    """`batch` requests of CONTEXT random tokens, prefilled into `pool`, then decoded greedily."""

    def __init__(self, runner: Any, pool: Any, batch: int, device: str, seed: int = 0):
        import torch

        from radixrt.workers.forward_batch import ForwardBatch

        self.runner, self.pool, self.device = runner, pool, device
        gen = torch.Generator().manual_seed(seed)
        vocab = runner.model_config.vocab_size
        self.slots = [pool.alloc(CONTEXT + 4 * STEPS).tolist() for _ in range(batch)]
        self.lengths = [CONTEXT] * batch
        per_forward = max(1, 16384 // CONTEXT)
        for first in range(0, batch, per_forward):
            rows = range(first, min(batch, first + per_forward))
            ids = [torch.randint(0, vocab, (CONTEXT,), generator=gen).tolist() for _ in rows]
            runner.forward(ForwardBatch.build(ids, [self.slots[i][:CONTEXT] for i in rows], device=device), pool)
        self.tokens = torch.randint(0, vocab, (batch,), generator=gen).tolist()

    def step(self) -> None:
        from radixrt.workers.forward_batch import ForwardBatch

        seqs = [s[: n + 1] for s, n in zip(self.slots, self.lengths)]
        batch = ForwardBatch.build([[t] for t in self.tokens], seqs, device=self.device)
        self.tokens = self.runner.forward(batch, self.pool).argmax(-1).tolist()
        self.lengths = [n + 1 for n in self.lengths]

    def free(self) -> None:
        import torch

        for s in self.slots:
            self.pool.free(torch.tensor(s))


def decode_rate(seqs: Sequences) -> float:
    """Tokens/s of STEPS decode steps after 3 warm-ups."""
    steps = STEPS
    for _ in range(3):
        seqs.step()
    _sync(seqs.device)
    start = time.perf_counter()
    for _ in range(steps):
        seqs.step()
    _sync(seqs.device)
    return len(seqs.tokens) * steps / (time.perf_counter() - start)


def measure_decode(name: str, shape: dict[str, Any], batches: tuple[int, ...], bandwidth: float, work: Path,
                   report: Any, device: str = "cuda", new_graph: Any = None) -> list[dict[str, Any]]:  # fmt: skip
    """Decode tokens/s at each batch size, eager and from graphs; prefill for llama3-8b. `report`
    gets the rows after each measurement."""
    import torch

    from radixrt.radix_cache.pool import KVPool
    from radixrt.workers.decode_graphs import CudaGraph
    from radixrt.workers.model_runner import ModelRunner

    runner = ModelRunner(write_config(work / name, shape), dtype="bfloat16", device=device, load_format="dummy")
    weights = decode_weight_bytes(runner.model_config, 2)
    per_request = CONTEXT + 4 * STEPS
    pool = KVPool(max(batches) * per_request + max(PREFILL_TOKENS, per_request) + 1, *runner.kv_shape(),
                  dtype=runner.dtype, device=device)  # fmt: skip
    runner.capture_decode_graphs(pool, max(batches), max(batches) * per_request, new_graph or CudaGraph)
    graphs, rows = runner.graphs, []
    for batch in batches:
        seqs = Sequences(runner, pool, batch, device)
        runner.graphs = None
        eager = decode_rate(seqs)
        runner.graphs = graphs
        replayed = decode_rate(seqs)
        seqs.free()
        row = {"model": name, "batch": batch, "context": CONTEXT, "eager_tokens_per_s": eager,
               "graph_tokens_per_s": replayed, "graph_over_eager": replayed / eager}  # fmt: skip
        if batch == 1:
            row["bound_tokens_per_s"] = bandwidth * 1e9 / (weights + runner.bytes_per_slot() * (CONTEXT + STEPS))
            row["bound_over_graph"] = row["bound_tokens_per_s"] / replayed
        rows.append(row)
        report(rows)
        _log(f"{name} decode batch {batch}: eager {eager:,.0f} tok/s, graphs {replayed:,.0f} tok/s")
    if name == "llama3-8b":
        rows.append(
            {
                "model": name,
                "prefill_tokens": PREFILL_TOKENS,
                "prefill_tokens_per_s": prefill_rate(runner, pool, device),
            }
        )
        report(rows)
    del runner, pool, graphs
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def prefill_rate(runner: Any, pool: Any, device: str) -> float:
    import torch

    from radixrt.workers.forward_batch import ForwardBatch

    slots = pool.alloc(PREFILL_TOKENS)
    ids = torch.randint(0, runner.model_config.vocab_size, (PREFILL_TOKENS,)).tolist()
    batch = ForwardBatch.build([ids], [slots], device=device)
    times = []
    for _ in range(4):
        _sync(device)
        start = time.perf_counter()
        runner.forward(batch, pool)
        _sync(device)
        times.append(time.perf_counter() - start)
    pool.free(slots)
    return PREFILL_TOKENS / statistics.median(times[1:])


WORKLOADS = "multi_turn,json_decode,react,tree_of_thought"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")  # fmt: skip


def export_tokenizer(dest: Path) -> None:
    """The embedded model's tokenizer files, for a GPU machine that cannot install the model."""
    import shutil

    from radixrt.workers.model_store import resolve_model

    source = resolve_model("default")
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, dest / name)


def run_workloads(tokenizer: Path, work: Path, out: Path, device: str = "cuda", shape: dict[str, Any] = SMOLLM2_135M,
                  bench_args: tuple[str, ...] = ("--quick", "--workload", WORKLOADS)) -> dict[str, Any]:  # fmt: skip
    """Part 4: the bench's workloads on radixrt and transformers on the GPU, random weights."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    folder = work / "smollm2-random"
    config = LlamaConfig(**shape, max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, folder / name)
    command = [sys.executable, "-m", "radixrt.bench", "--model", str(folder), "--device", device, "--no-micro",
               "--systems", "radixrt,transformers", *bench_args,
               "--json", str(out / "workloads.json"), "--markdown", str(out / "workloads.md")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    print("\n".join(lines[-30:]), flush=True)
    ratios = [line for line in lines if line.startswith("[ratio]")]
    return {"returncode": done.returncode, "command": " ".join(command[1:]), "ratios": ratios}


def _log(text: str) -> None:
    print(f"[gpu_check] {time.strftime('%H:%M:%S')} {text}", flush=True)


def run_tests() -> dict[str, Any]:
    # NOTE: tests/workers only: other folders import what a bare GPU machine lacks (Ray, the HTTP stack)
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/workers", "-p", "no:cacheprovider",
               "--continue-on-collection-errors"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    print("\n".join(lines[-25:]), flush=True)
    return {"returncode": done.returncode, "summary": lines[-1] if lines else done.stderr[-2000:]}


def markdown(result: dict[str, Any]) -> str:
    out = [f"*{result.get('device', '?')}; torch {result.get('torch', '?')}, flashinfer {result.get('flashinfer', '?')};"
           f" copy bandwidth {result.get('bandwidth_gbps', 0):,.0f} GB/s; {result.get('date', '')}*", ""]  # fmt: skip
    if "tests" in result:
        out += [f"GPU tests: {result['tests']['summary']}", ""]
    for part, error in result.get("errors", {}).items():
        out += [f"{part} failed: `{error.strip().splitlines()[-1]}` (the JSON has the traceback)", ""]
    decode = [r for r in result.get("rows", []) if "batch" in r]
    if decode:
        out += ["| model | batch | eager tok/s | CUDA graphs tok/s | graphs / eager | batch-1 bound tok/s | bound / graphs |",
                "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in decode:
            bound = (
                f"{r['bound_tokens_per_s']:,.0f} | {r['bound_over_graph']:.2f}x"
                if "bound_tokens_per_s" in r
                else "- | -"
            )
            out.append(f"| {r['model']} | {r['batch']} | {r['eager_tokens_per_s']:,.0f} | {r['graph_tokens_per_s']:,.0f} |"
                       f" {r['graph_over_eager']:.2f}x | {bound} |")  # fmt: skip
    workloads = result.get("workloads", {})
    if workloads:
        out += ["", "Workloads on this GPU (radixrt over transformers, random weights; `workloads.md` has the tables):"]
        out += [f"- {line}" for line in workloads.get("ratios", [])] or [f"- {workloads}"]
    for r in result.get("rows", []):
        if "prefill_tokens_per_s" in r:
            out += [
                "",
                f"Prefill, {r['model']}, one {r['prefill_tokens']:,}-token prompt: {r['prefill_tokens_per_s']:,.0f} tokens/s",
            ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check", help="folder for gpu-check.json and gpu-check.md")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-8b", action="store_true")
    parser.add_argument("--skip-workloads", action="store_true")
    parser.add_argument("--tokenizer", default=".whl/tokenizer", help="the embedded model's tokenizer files (part 4)")
    parser.add_argument(
        "--export-tokenizer", metavar="DIR", help="write the embedded model's tokenizer files here, and stop"
    )
    args = parser.parse_args(argv)
    if args.export_tokenizer:
        export_tokenizer(Path(args.export_tokenizer))
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA device")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}  # fmt: skip
    try:
        import flashinfer

        result["flashinfer"] = flashinfer.__version__
    except ImportError as exc:
        result["flashinfer"] = f"not importable: {exc}"

    def save() -> None:
        (out / "gpu-check.json").write_text(json.dumps(result, indent=1))
        (out / "gpu-check.md").write_text(markdown(result))

    if not args.skip_tests:
        _log("the GPU tests (pytest -m gpu tests/workers; flashinfer compiles its kernels on first use: minutes)")
        result["tests"] = run_tests()
        save()
    result["bandwidth_gbps"] = copy_bandwidth_gbps()
    _log(f"device-to-device copy: {result['bandwidth_gbps']:,.0f} GB/s")
    with tempfile.TemporaryDirectory() as work:
        models = [("smollm2-135m", SMOLLM2_135M, (1, 16))]
        if not args.skip_8b:
            models.append(("llama3-8b", LLAMA3_8B, DECODE_BATCHES))
        for name, shape, batches in models:
            done = list(result["rows"])
            _log(f"{name}: capturing decode graphs, then decode at batch sizes {batches}")
            try:  # a part that fails is recorded, and the others still run: device minutes are few
                measure_decode(name, shape, batches, result["bandwidth_gbps"], Path(work),
                               lambda rows, done=done: (result.__setitem__("rows", done + rows), save()))  # fmt: skip
            except Exception:
                result.setdefault("errors", {})[name] = traceback.format_exc(limit=8)
                print(result["errors"][name], flush=True)
                save()
        if not args.skip_workloads:
            if (Path(args.tokenizer) / "tokenizer.json").exists():
                _log(f"the workloads {WORKLOADS} on radixrt and transformers (--quick)")
                result["workloads"] = run_workloads(Path(args.tokenizer), Path(work), out)
            else:
                result["workloads"] = {"skipped": f"no tokenizer in {args.tokenizer} (make gpu-wheels writes it)"}
    save()
    print(markdown(result))


if __name__ == "__main__":
    main()
