"""The results as Markdown tables (BENCHMARKS.md's, generated, never typed by hand).

    python -m radixrt.bench.tables benchmarks/results/RUN.json                      # print them
    python -m radixrt.bench.tables benchmarks/results/RUN.json --into BENCHMARKS.md  # replace them
    python -m radixrt.bench.tables A.json B.json ... --against llamacpp  # one table across runs

With `--into`, the text between the `<!-- bench:tables begin -->` and `<!-- bench:tables end -->`
lines is replaced. Every table is headed by the machine it ran on (CPU, ISA flags, threads).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from radixrt.bench.report import BASE, system_order
from radixrt.bench.targets import evaluate

BEGIN, END = "<!-- bench:tables begin -->", "<!-- bench:tables end -->"


def markdown(results: dict[str, Any], source: str | None = None) -> str:
    """All tables of one run; `source` (the JSON file's path) is named under each table."""
    caption = machine_line(results, source)
    sections = [
        ("Throughput: many programs in flight", _throughput),
        ("Single-program latency: one program at a time", _interactive),
        ("Ratios: radixrt over each system (> 1: radixrt faster)", _ratios),
        ("Outputs cross-checked against radixrt (greedy workloads)", _crosscheck),
        ("Targets", _targets),
        ("Speculative decoding: radixrt (--speculative ngram) over radixrt-nospec", _speculation),
        ("Engine micro-benchmarks", _micro),
        ("Weight-only int8 against bf16 (same run)", _int8),
        ("The GGUF file's own quantized tensors (`--quantization gguf`) against bf16 (same run)", _gguf),
        ("radixrt against llama.cpp on its GGUF file (same run)", _llamacpp),
    ]
    parts = []
    for title, table in sections:
        lines = table(results)
        if len(lines) > 2:  # rows below the header (a micro-benchmarks-only run has no workload rows)
            parts.append("\n".join([f"#### {title}", "", caption, "", *lines]))
    return "\n\n".join(parts) + "\n"


def machine_line(results: dict[str, Any], source: str | None = None) -> str:
    m, s = results.get("machine", {}), results.get("settings", {})
    llama = (
        f"; llama-cpp-python {m['llama_cpp_python']} ({m.get('llama_cpp_build', '')})"
        if "llama_cpp_python" in m
        else ""
    )
    mode = "--quick" if s.get("quick") else "full size"
    if s.get("dtype", "bfloat16") != "bfloat16":
        mode += f", {s['dtype']}"
    if s.get("rounds", 1) > 1:
        mode += f", {s['rounds']} rounds (ratios: the rounds' median, their range in brackets)"
    where = f"; results: `{source}`" if source else ""
    cpu = f"{m.get('cpu', '?')} ({m['cpu_id']})" if m.get("cpu_id") else m.get("cpu", "?")
    if s.get("device") == "cuda":
        cpu = f"{m.get('gpu', 'a CUDA GPU')} (radixrt and transformers), host {cpu}"
    return (f"*{cpu}, {m.get('cores', '?')} cores, ISA {' '.join(m.get('isa', [])) or '?'}; "
            f"{m.get('torch_threads', '?')} threads for every system{llama}; {mode}, seed {s.get('seed', '?')}, "
            f"{m.get('date_utc', '?')}{where}*")  # fmt: skip


def _systems(entry: dict[str, Any], key: str = "systems") -> list[str]:
    return sorted(entry.get(key, {}), key=system_order, reverse=True)


def _throughput(results: dict[str, Any]) -> list[str]:
    lines = ["| workload | system | programs | prog/s | out tok/s | p50 s | p99 s | hit rate | optimal | busy | accuracy | ok |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, entry in results["workloads"].items():
        for system in _systems(entry):
            f = entry["systems"][system]
            lines.append(
                f"| {name} | {system} | {f['programs']} | {f['programs_per_s']:.3f} | {f['output_tokens_per_s']:.1f} "
                f"| {_num(f['latency_p50_s'])} | {_num(f['latency_p99_s'])} | {f['cache_hit_rate']:.0%} "
                f"| {f['optimal_hit_rate']:.0%} | {_share(f.get('server_busy'))} | {_share(f.get('accuracy'))} "
                f"| {f['ok_programs']}/{f['programs']} |"
            )
    return lines


def _interactive(results: dict[str, Any]) -> list[str]:
    rows = [(name, system, entry["interactive"][system], entry)
            for name, entry in results["workloads"].items() for system in _systems(entry, "interactive")]  # fmt: skip
    lines = [
        "| workload | system | programs | mean latency s | p50 s | radixrt faster by |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, system, f, entry in rows:
        speedup = "-" if system == BASE else _ratio(entry, system, "interactive_speedup")
        lines.append(
            f"| {name} | {system} | {f['programs']} | {_num(f['latency_mean_s'])} | {_num(f['latency_p50_s'])} | {speedup} |"
        )
    return lines if rows else []


def _ratios(results: dict[str, Any]) -> list[str]:
    lines = ["| workload | vs | programs/s | output tok/s | p50 latency | p99 latency | 1-program latency |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    keys = (
        "programs_per_s",
        "output_tokens_per_s",
        "latency_p50_speedup",
        "latency_p99_speedup",
        "interactive_speedup",
    )
    for name, entry in results["workloads"].items():
        for other in sorted(entry.get("ratios", {}), key=system_order):
            lines.append(f"| {name} | {other} | " + " | ".join(_ratio(entry, other, k) for k in keys) + " |")
    return lines


def _crosscheck(results: dict[str, Any]) -> list[str]:
    lines = ["| workload | system | identical programs | identical fields | accuracy (radixrt's) | first difference |",
             "|---|---|---:|---:|---:|---|"]  # fmt: skip
    for name, entry in results["workloads"].items():
        check = entry.get("crosscheck") or {}
        if not check.get("greedy"):
            lines.append(f"| {name} | - | - | - | - | sampled (temperature > 0): not compared |")
            continue
        base_accuracy = entry["systems"].get(BASE, {}).get("accuracy")
        for other in sorted(check["pairs"], key=system_order):
            p = check["pairs"][other]
            accuracy = entry["systems"].get(other, {}).get("accuracy")
            acc = "-" if accuracy is None else f"{accuracy:.0%} ({_share(base_accuracy)})"
            flag = " **MISMATCH**" if other in check.get("failed", []) else ""
            lines.append(f"| {name} | {other}{flag} | {p['identical_programs']}/{p['programs']} | {_share(p['field_agreement'])} "
                         f"| {acc} | {_difference(p.get('first_difference'))} |")  # fmt: skip
    return lines


def _speculation(results: dict[str, Any]) -> list[str]:
    lines = ["| workload | accepted drafts (in flight) | accepted (one at a time) | out tok/s in flight | "
             "out tok/s one at a time |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, entry in results["workloads"].items():
        ours, ratios = entry["systems"].get(BASE, {}), entry.get("ratios", {}).get("radixrt-nospec")
        if "spec_draft_tokens" not in ours or ratios is None:
            continue
        alone = entry.get("interactive", {}).get(BASE, {})
        lines.append(f"| {name} | {_acceptance(ours)} | {_acceptance(alone)} "
                     f"| {_ratio(entry, 'radixrt-nospec', 'output_tokens_per_s')} "
                     f"| {_ratio(entry, 'radixrt-nospec', 'interactive_output_tokens_per_s')} |")  # fmt: skip
    return lines if len(lines) > 2 else []


def _acceptance(f: dict[str, Any]) -> str:
    if not f.get("spec_draft_tokens"):
        return "-"
    return f"{f['spec_acceptance']:.0%} ({f['spec_accepted_tokens']}/{f['spec_draft_tokens']})"


def _targets(results: dict[str, Any]) -> list[str]:
    lines = ["| workload | target | goal | measured | |", "|---|---|---:|---:|---|"]
    for row in evaluate(results):
        measured = "-" if row["measured"] is None else f"{row['measured']:.2f}"
        lines.append(f"| {row['workload']} | {row['target']} | {row['goal']:g} | {measured} | {_verdict(row)} |")
    return lines


def _verdict(row: dict[str, Any]) -> str:
    return "met" if row["met"] else "not measured" if row["measured"] is None else f"missed by {row['short_by']:.0%}"


def across_runs(runs: list[tuple[dict[str, Any], str]], other: str) -> str:
    """radixrt over `other`, one row per workload of each (results, source) run that measured both
    (each ratio from its own run), highest programs/s ratio first, headed by every run's machine."""
    rows = []
    for results, source in runs:
        judged = {(r["workload"], r["target"]): r for r in evaluate(results)}
        for name, entry in results["workloads"].items():
            ratios = entry.get("ratios", {}).get(other)
            if not ratios or ratios.get("programs_per_s") is None:
                continue
            target = judged.get((name, f"prog/s vs {other}"))
            rows.append((ratios["programs_per_s"], name, _verdict(target) if target else "-",
                         _ratio(entry, other, "interactive_speedup"), f"`{source}`"))  # fmt: skip
    lines = [f"| workload | programs/s over {other} | target | 1-program latency over {other} | results |",
             "|---|---:|---|---:|---|"]  # fmt: skip
    lines += [f"| {name} | {_times(ratio)} | {verdict} | {alone} | {source} |"
              for ratio, name, verdict, alone, source in sorted(rows, key=lambda r: -r[0])]  # fmt: skip
    if not rows:
        measured = sorted(
            {o for results, _ in runs for e in results["workloads"].values() for o in e.get("ratios", {})}
        )
        raise ValueError(f"no run given measured radixrt against {other!r}; these did against: {', '.join(measured)}")
    captions = sorted({machine_line(results) for results, _ in runs})
    return "\n\n".join(captions) + "\n\n" + "\n".join(lines) + "\n"


def _micro(results: dict[str, Any]) -> list[str]:
    m = results.get("micro")
    if not m:
        return []
    base = m.get("transformers")
    rows = [("prefill, 1,024-token prompt", m["prefill_tokens_per_s"], base and base["prefill_tokens_per_s"])]
    rows += [
        (f"decode, batch {b}", v, base and base["decode_tokens_per_s"].get(b))
        for b, v in m["decode_tokens_per_s"].items()
    ]
    batch = m["json_batch"]
    rows += [(f"JSON-schema decode, batch {batch} (jump-forward on)", m["json_decode_tokens_per_s"], None),
             (f"JSON-schema decode, batch {batch} (jump-forward off)", m["json_nojump_decode_tokens_per_s"], None),
             (f"unconstrained decode, batch {batch}, same length", m["unconstrained_decode_tokens_per_s"], None)]  # fmt: skip
    lines = ["| engine micro-benchmark | radixrt tokens/s | transformers tokens/s | ratio |", "|---|---:|---:|---:|"]
    for name, ours, theirs in rows:
        lines.append(
            f"| {name} | {ours:.0f} | {f'{theirs:.0f}' if theirs else '-'} | {_times(ours / theirs if theirs else None)} |"
        )
    return lines


def _int8(results: dict[str, Any]) -> list[str]:
    return _quantized(results, "int8")


def _gguf(results: dict[str, Any]) -> list[str]:
    return _quantized(results, "gguf")


def _quantized(results: dict[str, Any], mode: str) -> list[str]:
    m = results.get("micro") or {}
    q = m.get(mode)
    if not q:
        return []
    if "vs_bf16" in q:  # measured in alternating rounds: bf16 figures and ratios of the same rounds
        bf16, ratios, ranges = q["bf16_same_rounds"], q["vs_bf16"], q["vs_bf16_range"]
        rows = [("prefill, 1,024-token prompt", q["prefill_tokens_per_s"], bf16["prefill"], ratios["prefill"],
                 ranges["prefill"])]  # fmt: skip
        rows += [(f"decode, batch {b}", v, bf16[f"decode_{b}"], ratios[f"decode_{b}"], ranges[f"decode_{b}"])
                 for b, v in q["decode_tokens_per_s"].items()]  # fmt: skip
        lines = [f"| engine micro-benchmark ({q['rounds']} rounds) | {mode} tokens/s | bf16 tokens/s | ratio (range) |",
                 "|---|---:|---:|---:|"]  # fmt: skip
        for name, ours, theirs, ratio, (low, high) in rows:
            lines.append(f"| {name} | {ours:.0f} | {theirs:.0f} | {_times(ratio)} ({low:.2f}-{high:.2f}) |")
        return lines
    rows = [("prefill, 1,024-token prompt", q["prefill_tokens_per_s"], m["prefill_tokens_per_s"])]
    rows += [(f"decode, batch {b}", v, m["decode_tokens_per_s"].get(b)) for b, v in q["decode_tokens_per_s"].items()]
    lines = [f"| engine micro-benchmark | {mode} tokens/s | bf16 tokens/s | ratio |", "|---|---:|---:|---:|"]
    for name, ours, theirs in rows:
        lines.append(f"| {name} | {ours:.0f} | {theirs:.0f} | {_times(ours / theirs if theirs else None)} |")
    return lines


def _llamacpp(results: dict[str, Any]) -> list[str]:
    m = results.get("micro") or {}
    llama = m.get("llamacpp")
    if not llama:
        return []
    modes = [("bf16", m)] + [(mode, m[mode]) for mode in ("int8", "gguf") if mode in m]
    head = "".join(f" radixrt {name} tokens/s | ratio |" for name, _ in modes)
    lines = [f"| engine micro-benchmark | llama.cpp tokens/s ({llama['gguf']}) |{head}",
             "|---|---:|" + "---:|---:|" * len(modes)]  # fmt: skip
    for name, get in (("prefill, 1,024-token prompt", lambda r: r["prefill_tokens_per_s"]),
                      ("decode, batch 1", lambda r: r["decode_tokens_per_s"]["1"])):  # fmt: skip
        theirs = get(llama)
        cells = "".join(f" {get(r):.0f} | {_times(get(r) / theirs)} |" for _, r in modes)
        lines.append(f"| {name} | {theirs:.0f} |{cells}")
    return lines


def _ratio(entry: dict[str, Any], other: str, key: str) -> str:
    """A ratio, and with several rounds its range: `1.08x (1.02-1.12)`."""
    cell = _times((entry.get("ratios", {}).get(other) or {}).get(key))
    span = (entry.get("ratio_ranges", {}).get(other) or {}).get(key)
    return f"{cell} ({span[0]:.2f}-{span[1]:.2f})" if span and cell != "-" else cell


def _difference(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    where = f"program {d['program']}" + (f", `{d['field']}`" if d.get("field") else "")
    return f"{where}: `{_cell(d.get('radixrt'))}` vs `{_cell(d.get('other'))}`"


def _cell(text: Any) -> str:
    return re.sub(r"[|`\n]", " ", str(text))[:40]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def replace_between_markers(document: str, tables: str) -> str:
    """`document` with the text between the BEGIN and END lines replaced by `tables`."""
    pattern = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.S)
    if not pattern.search(document):
        raise ValueError(f"no {BEGIN} ... {END} block to replace")
    return pattern.sub(lambda _: f"{BEGIN}\n{tables}{END}", document, count=1)


def main(argv: list[str] | None = None, out: Callable[[str], Any] = print) -> None:
    parser = argparse.ArgumentParser(prog="python -m radixrt.bench.tables", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results JSON files written by `python -m radixrt.bench --json`")
    parser.add_argument("--into", help="a Markdown file whose generated block is replaced")
    parser.add_argument("--against", metavar="SYSTEM", help="one table of radixrt over SYSTEM across the runs given")
    args = parser.parse_args(argv)
    runs = [(json.loads(Path(path).read_text()), path) for path in args.results]
    if args.against:
        if args.into:
            parser.error("--against prints its table; --into replaces one run's tables (use them apart)")
        try:
            out(across_runs(runs, args.against))
        except ValueError as e:
            parser.error(str(e))
        return
    if len(runs) > 1:
        parser.error("several results files need --against (their tables one at a time otherwise)")
    tables = markdown(*runs[0])
    if args.into:
        path = Path(args.into)
        path.write_text(replace_between_markers(path.read_text(), tables))
    else:
        out(tables)


if __name__ == "__main__":
    main()
