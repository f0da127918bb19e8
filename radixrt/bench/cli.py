"""`python -m radixrt.bench`: run the workloads on each system, the engine micro-benchmarks,
print one line per system and workload, and write the JSON results and a PNG chart.

    python -m radixrt.bench --workload all --quick --json out.json --plot out.png
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from radixrt.bench import report
from radixrt.bench.runner import run_workload
from radixrt.bench.systems import DEFAULT_SYSTEMS, SYSTEMS, SystemConfig, start
from radixrt.bench.workloads import WORKLOADS

DESCRIPTION = "Agentic DSL workloads on radixrt, radixrt without its cache and transformers; engine micro-benchmarks."
NOJUMP_WORKLOADS = ("json_decode",)  # radixrt-nojump differs from radixrt only under a grammar


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m radixrt.bench", description=DESCRIPTION)
    p.add_argument("--workload", default="all", help=f"all, or a comma list of: {', '.join(WORKLOADS)}")
    p.add_argument("--systems", default=",".join((*DEFAULT_SYSTEMS, "radixrt-nojump")),
                   help=f"comma list of: {', '.join(SYSTEMS)} (radixrt-nojump runs json_decode only)")  # fmt: skip
    p.add_argument("--num-programs", type=int, default=None, help="programs per workload (default: per workload)")
    p.add_argument("--parallel", type=int, default=32, help="programs in flight at once (run_batch threads)")
    p.add_argument("--quick", action="store_true", help="small sizes: each workload about 2 minutes on 2 cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="default", help="model folder or 'default' (the embedded SmolLM2-135M)")
    p.add_argument("--max-batch", type=int, default=64, help="server max_running_requests = transformers batch")
    p.add_argument("--no-micro", action="store_true", help="skip the engine micro-benchmarks")
    p.add_argument("--json", dest="json_out", default=None, help="write the results here")
    p.add_argument("--plot", default=None, help="write a PNG chart here")
    p.add_argument("--markdown", default=None, help="write the tables (as in BENCHMARKS.md) here")
    args = p.parse_args(argv)
    args.workloads = list(WORKLOADS) if args.workload == "all" else _names(args.workload, WORKLOADS, p, "workload")
    args.system_names = _names(args.systems, SYSTEMS, p, "system")
    return args


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
    tokenizer = load_tokenizer(resolve_model(args.model))
    results: dict[str, Any] = {"workloads": {w: {"systems": {}} for w in args.workloads},
                               "machine": report.machine_info(), "settings": _settings(args)}  # fmt: skip
    config = SystemConfig(model=args.model, max_batch=args.max_batch)
    _run_all(config, args, results, lambda text: tokenizer.encode(text, add_special_tokens=True))
    for entry in results["workloads"].values():
        entry["ratios"] = report.ratios(entry["systems"])
    if not args.no_micro:
        _log("[micro] prefill / decode / json decode on radixrt.Engine ...")
        from radixrt.bench.micro import run_micro

        micro = results["micro"] = run_micro(args.model, repeats=3 if args.quick else 5, seed=args.seed)
        _log("[micro] " + _micro_line(micro))
        if "transformers" in args.system_names:
            _log("[micro] the same prefill / decode on transformers ...")
            from radixrt.bench.micro_transformers import micro_ratios, run_micro_transformers

            micro["transformers"] = run_micro_transformers(args.model, repeats=3 if args.quick else 5, seed=args.seed)
            micro["vs_transformers"] = micro_ratios(micro, micro["transformers"])
            _log(
                "[micro] radixrt / transformers: "
                + ", ".join(f"{k} {v:.2f}x" for k, v in micro["vs_transformers"].items())
            )
    results["machine"]["load_average_end"] = list(os.getloadavg())
    _print_ratios(results)
    if args.json_out:
        report.write_json(results, args.json_out)
    if args.plot:
        report.write_plot(results, args.plot)
    if args.markdown:
        Path(args.markdown).write_text(report.markdown(results))
    failed = sum(f["programs"] - f["ok_programs"] for w in results["workloads"].values() for f in w["systems"].values())
    return 1 if failed else 0


def _run_all(config: SystemConfig, args: argparse.Namespace, results: dict[str, Any], encode: Any) -> None:
    """Start every system first, then run each workload on each system in turn: on a shared
    machine, other users' load then falls on all systems of a workload alike, not on one system."""
    sessions = {}
    try:
        for system in args.system_names:
            if any(_applies(system, name) for name in args.workloads):
                _log(f"[{system}] starting ...")
                sessions[system] = start(system, config)
        for name in args.workloads:
            workload = WORKLOADS[name]
            n = args.num_programs or (workload.quick_programs if args.quick else workload.full_programs)
            for system, session in sessions.items():
                if _applies(system, name):
                    figures = run_workload(workload, session, num_programs=n, parallel=args.parallel,
                                           seed=args.seed, encode=encode)  # fmt: skip
                    results["workloads"][name]["systems"][system] = figures
                    _log(f"[{system}] {name}: " + _figures_line(figures))
    finally:
        for session in sessions.values():
            session.close()


def _applies(system: str, workload: str) -> bool:
    return system != "radixrt-nojump" or workload in NOJUMP_WORKLOADS


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("quick", "num_programs", "parallel", "seed", "model", "max_batch", "system_names", "workloads")
    return {k: getattr(args, k) for k in keys} | {"command": "python -m radixrt.bench " + " ".join(sys.argv[1:])}


def _figures_line(f: dict[str, Any]) -> str:
    line = (f"{f['programs']} programs in {f['wall_s']:.1f}s  {f['programs_per_s']:.2f} prog/s  "
            f"{f['output_tokens_per_s']:.1f} out tok/s  p50 {f['latency_p50_s']:.2f}s p99 {f['latency_p99_s']:.2f}s  "
            f"hit {f['cache_hit_rate']:.0%} (optimal {f['optimal_hit_rate']:.0%})  busy {f.get('server_busy', 0):.0%}")  # fmt: skip
    bad = f["programs"] - f["ok_programs"]
    return line + (f"  {bad} FAILED: {f['problems'][0]}" if bad else "")


def _micro_line(m: dict[str, Any]) -> str:
    decode = " ".join(f"b{b}={v:.0f}" for b, v in m["decode_tokens_per_s"].items())
    return (
        f"prefill {m['prefill_tokens_per_s']:.0f} tok/s; decode tok/s {decode}; json "
        f"{m['json_decode_tokens_per_s']:.0f} (no jump-forward {m['json_nojump_decode_tokens_per_s']:.0f}) "
        f"vs plain {m['unconstrained_decode_tokens_per_s']:.0f} tok/s"
    )


def _print_ratios(results: dict[str, Any]) -> None:
    for name, entry in results["workloads"].items():
        parts = [f"{pair}: {r['programs_per_s']:.2f}x" for pair, r in entry["ratios"].items() if r["programs_per_s"]]
        if parts:
            _log(f"[ratio] {name} programs/s " + ", ".join(parts))


def _log(line: str) -> None:
    print(line, flush=True)
