"""`python -m radixrt.bench`: run the workloads on each system (many programs in flight, then
one at a time), cross-check their outputs, run the engine micro-benchmarks, print one line per
system and workload, and write the JSON results, a PNG chart and the Markdown tables.

    python -m radixrt.bench --workload all --quick --json out.json --plot out.png --markdown out.md

Exit status 1 when a program failed or radixrt and radixrt-nocache disagreed on a greedy output.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from radixrt.bench import report
from radixrt.bench.suite import Plan, run_suite
from radixrt.bench.systems import DEFAULT_SYSTEMS, NEEDS_GGUF, SYSTEMS, SystemConfig, missing_systems, needs_gguf_file
from radixrt.bench.workloads import WORKLOADS

DESCRIPTION = "Agentic DSL workloads (SGLang's benchmark programs) on radixrt and its peers; engine micro-benchmarks."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m radixrt.bench", description=DESCRIPTION)
    p.add_argument("--workload", default="all",
                   help=f"all, none (the micro-benchmarks only), or a comma list of: {', '.join(WORKLOADS)}")  # fmt: skip
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help=f"comma list of: {', '.join(SYSTEMS)} (radixrt-nojump runs json_decode only)")  # fmt: skip
    p.add_argument("--num-programs", type=int, default=None, help="programs per workload (default: per workload)")
    p.add_argument("--interactive", type=int, default=None,
                   help="programs run one at a time for the single-user latency (default: per workload; 0: skip)")  # fmt: skip
    p.add_argument("--parallel", type=int, default=32, help="programs in flight at once (run_batch threads)")
    p.add_argument("--quick", action="store_true", help="fewer programs per workload, SGLang's lengths (< 30 min)")
    p.add_argument("--rounds", type=_positive, default=1,
                   help="run each workload this many times per system, alternating the systems' order; "
                   "ratios are the rounds' medians, with their range")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="default", help="model folder or 'default' (the embedded SmolLM2-135M)")
    p.add_argument("--gguf", default=None, help="the GGUF file the llamacpp system runs (default: the embedded one)")
    p.add_argument("--max-batch", type=int, default=64, help="server max_running_requests = transformers batch")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="what radixrt and transformers compute in (float32: what CPUs without native bf16 run)")  # fmt: skip
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where radixrt and transformers run")
    p.add_argument("--no-micro", action="store_true", help="skip the engine micro-benchmarks")
    p.add_argument("--json", dest="json_out", default=None, help="write the results here (benchmarks/results/...)")
    p.add_argument("--plot", default=None, help="write a PNG chart here")
    p.add_argument("--markdown", default=None, help="write the tables (as in BENCHMARKS.md) here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not args.no_micro:
        p.error("the engine micro-benchmarks run on the CPU: add --no-micro to --device cuda")
    if args.device == "cuda" and not _cuda_available():
        p.error("--device cuda: torch sees no CUDA device here")
    if args.workload == "none" and args.no_micro:
        p.error("--workload none with --no-micro runs nothing")
    named = {"all": list(WORKLOADS), "none": []}
    args.workloads = named[args.workload] if args.workload in named else _names(args.workload, WORKLOADS, p, "workload")
    args.system_names = _names(args.systems, SYSTEMS, p, "system")
    if "llamacpp" in args.system_names and needs_gguf_file(args.model, args.gguf):
        p.error(NEEDS_GGUF)  # now, not when the system starts (after the other systems' runs)
    return args


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _names(text: str, known: Any, parser: argparse.ArgumentParser, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"unknown {what} {unknown or text!r}; choose from {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from radixrt.runtime.server.tokenizer_manager import load_tokenizer
    from radixrt.workers.model_runner import use_all_cores
    from radixrt.workers.model_store import resolve_model

    use_all_cores()  # the transformers baseline gets the same threads as the server's worker
    skipped = missing_systems(args.system_names)
    for system, reason in skipped.items():
        _log(f"[{system}] SKIPPED: {reason}; the other systems run")
    tokenizer = load_tokenizer(resolve_model(args.model))
    results: dict[str, Any] = {
        "machine": report.machine_info(),
        "settings": _settings(args),
        "skipped_systems": skipped,
    }
    if args.device == "cuda":
        import torch

        results["machine"]["gpu"] = torch.cuda.get_device_name()
    config = SystemConfig(model=args.model, max_batch=args.max_batch, threads=results["machine"]["torch_threads"],
                          gguf=args.gguf, dtype=args.dtype, device=args.device)  # fmt: skip
    plan = Plan(args.workloads, [s for s in args.system_names if s not in skipped], args.quick, args.num_programs,
                args.interactive, args.parallel, args.seed, args.rounds)  # fmt: skip
    results["workloads"] = run_suite(config, plan, lambda text: tokenizer.encode(text, add_special_tokens=True), _log)
    if not args.no_micro:
        results["micro"] = _micro(args, config, skipped)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    _print_summary(results)
    _write(results, args)
    return _exit_status(results)


def _micro(args: argparse.Namespace, config: SystemConfig, skipped: dict[str, str]) -> dict[str, Any]:
    _log("[micro] prefill / decode / json decode on radixrt.Engine ...")
    from radixrt.bench.micro import run_micro

    micro = run_micro(args.model, dtype=args.dtype, repeats=3 if args.quick else 5, seed=args.seed)
    _log(f"[micro] prefill {micro['prefill_tokens_per_s']:.0f} tok/s; decode tok/s "
         + " ".join(f"b{b}={v:.0f}" for b, v in micro["decode_tokens_per_s"].items()))  # fmt: skip
    for mode in ("int8", "gguf"):
        if mode in micro:
            _log(
                f"[micro] {mode} / bf16, same rounds: "
                + ", ".join(f"{k} {v:.2f}x" for k, v in micro[mode]["vs_bf16"].items())
            )
    if "transformers" in args.system_names:
        _log("[micro] the same prefill / decode on transformers ...")
        from radixrt.bench.micro_transformers import micro_ratios, run_micro_transformers

        micro["transformers"] = run_micro_transformers(
            args.model, dtype=args.dtype, repeats=3 if args.quick else 5, seed=args.seed
        )
        micro["vs_transformers"] = micro_ratios(micro, micro["transformers"])
        _log(
            "[micro] radixrt / transformers: " + ", ".join(f"{k} {v:.2f}x" for k, v in micro["vs_transformers"].items())
        )
    if "llamacpp" in args.system_names and "llamacpp" not in skipped:
        _log("[micro] prefill / batch-1 decode on llama.cpp ...")
        from radixrt.bench.micro_llamacpp import llamacpp_ratios, run_micro_llamacpp
        from radixrt.bench.systems import gguf_path

        gguf = gguf_path("llamacpp", config)
        micro["llamacpp"] = run_micro_llamacpp(gguf, config.threads, repeats=3 if args.quick else 5, seed=args.seed)
        micro["vs_llamacpp"] = llamacpp_ratios(micro, micro["llamacpp"])
        _log("[micro] radixrt / llama.cpp: " + ", ".join(f"{k} {v:.2f}x" for k, v in micro["vs_llamacpp"].items()))
    return micro


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("quick", "num_programs", "interactive", "parallel", "seed", "rounds", "model", "gguf", "max_batch",
            "system_names", "workloads", "dtype", "device")  # fmt: skip
    return {k: getattr(args, k) for k in keys} | {"command": "python -m radixrt.bench " + " ".join(sys.argv[1:])}


def _print_summary(results: dict[str, Any]) -> None:
    for name, entry in results["workloads"].items():
        spans = entry.get("ratio_ranges", {})
        parts = [f"{other}: {r['programs_per_s']:.2f}x" + _span(spans.get(other, {}).get("programs_per_s"))
                 for other, r in entry["ratios"].items() if r["programs_per_s"]]  # fmt: skip
        if parts:
            _log(f"[ratio] {name} programs/s " + ", ".join(parts))
        for other, pair in entry["crosscheck"]["pairs"].items():
            _log(
                f"[crosscheck] {name} {other}: {pair['identical_programs']}/{pair['programs']} programs identical to radixrt"
            )


def _span(low_high: list[float] | None) -> str:
    return f" ({low_high[0]:.2f}-{low_high[1]:.2f} over the rounds)" if low_high else ""


def _write(results: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json_out:
        report.write_json(results, args.json_out)
    if args.plot:
        report.write_plot(results, args.plot)
    if args.markdown:
        from radixrt.bench.tables import markdown

        Path(args.markdown).write_text(markdown(results, source=args.json_out))


def _exit_status(results: dict[str, Any]) -> int:
    workloads = results["workloads"].values()
    failed = sum(f["programs"] - f["ok_programs"] for w in workloads for f in w["systems"].values())
    mismatched = [name for name, w in results["workloads"].items() if w["crosscheck"]["failed"]]
    if mismatched:
        _log(f"[crosscheck] FAILED: radixrt-nocache's greedy outputs differ from radixrt's on {', '.join(mismatched)}")
    return 1 if failed or mismatched else 0


def _log(line: str) -> None:
    print(line, flush=True)
