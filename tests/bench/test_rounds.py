"""`--rounds N`: each workload runs N times per system with the systems' order reversed every
round, ratios are the median of each round's own ratios (with their range), and a greedy
mismatch in any round fails the workload."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from radixrt.bench import report, suite
from radixrt.bench.cli import parse_args
from radixrt.bench.runner import Run
from radixrt.bench.tables import markdown
from radixrt.bench.workloads import WORKLOADS


def _figures(prog_s: float) -> dict:
    return {"programs": 2, "ok_programs": 2, "problems": [], "wall_s": 2 / prog_s, "programs_per_s": prog_s,
            "output_tokens_per_s": 10 * prog_s, "latency_p50_s": 1 / prog_s, "latency_p99_s": 1 / prog_s,
            "cache_hit_rate": 0.5, "optimal_hit_rate": 0.5}  # fmt: skip


class FakeRuns:
    """Stands in for the runner: each call takes the next scripted programs/s of its system and
    returns `outputs[system][round]`; `calls` records the order the systems ran in."""

    def __init__(self, speeds: dict[str, list[float]], outputs: dict[str, list[list]]):
        self.speeds, self.outputs, self.calls = speeds, outputs, []
        self.seen: dict[str, int] = {}

    def run_workload(self, workload, session, **_) -> Run:
        i = self.seen.get(session.name, 0)
        self.seen[session.name] = i + 1
        self.calls.append(session.name)
        return Run(_figures(self.speeds[session.name][i]), self.outputs[session.name][i])

    def run_interactive(self, workload, session, **_) -> Run:
        i = self.seen[session.name] - 1
        speed = self.speeds[session.name][i]
        return Run({"programs": 1, "latency_mean_s": 1 / speed, "latency_p50_s": 1 / speed,
                    "output_tokens_per_s": 10 * speed}, [])  # fmt: skip


def _run(monkeypatch, runs: FakeRuns, rounds: int) -> dict:
    monkeypatch.setattr(suite, "run_workload", runs.run_workload)
    monkeypatch.setattr(suite, "run_interactive", runs.run_interactive)
    sessions = {name: SimpleNamespace(name=name, one_at_a_time=False) for name in runs.speeds}
    plan = suite.Plan(["few_shot"], list(sessions), quick=True, num_programs=2, interactive=1, parallel=2, seed=0,
                      rounds=rounds)  # fmt: skip
    return suite._one_workload(WORKLOADS["few_shot"], sessions, plan, encode=None, log=lambda line: None)


SAME = [{"answer": " A"}, {"answer": " B"}]


def test_rounds_alternate_the_order_and_ratios_are_the_rounds_medians(monkeypatch):
    # the machine slows down over the run: whoever runs second in a round looks slower
    speeds = {"radixrt": [2.0, 1.5, 1.8], "radixrt-nospec": [1.9, 1.6, 1.7]}
    runs = FakeRuns(speeds, {name: [SAME] * 3 for name in speeds})
    entry = _run(monkeypatch, runs, rounds=3)

    assert runs.calls == ["radixrt", "radixrt-nospec", "radixrt-nospec", "radixrt", "radixrt", "radixrt-nospec"]
    per_round = [a / b for a, b in zip(speeds["radixrt"], speeds["radixrt-nospec"])]
    ratios, ranges = entry["ratios"]["radixrt-nospec"], entry["ratio_ranges"]["radixrt-nospec"]
    assert ratios["programs_per_s"] == pytest.approx(sorted(per_round)[1])
    assert ratios["interactive_speedup"] == pytest.approx(sorted(per_round)[1])
    assert ranges["programs_per_s"] == pytest.approx([min(per_round), max(per_round)])
    assert entry["systems"]["radixrt"]["programs_per_s"] == 2.0  # the figures are the first round's
    assert [r["systems"]["radixrt"]["programs_per_s"] for r in entry["rounds"]] == speeds["radixrt"]
    assert entry["crosscheck"]["failed"] == [] and entry["crosscheck"]["rounds"] == 3


def test_one_round_keeps_the_single_run_shape(monkeypatch):
    speeds = {"radixrt": [2.0], "radixrt-nocache": [1.0]}
    entry = _run(monkeypatch, FakeRuns(speeds, {name: [SAME] for name in speeds}), rounds=1)
    assert "rounds" not in entry and "ratio_ranges" not in entry
    assert entry["ratios"] == report.ratios(entry["systems"], entry["interactive"])


def test_a_greedy_mismatch_in_a_later_round_fails_the_workload(monkeypatch):
    differs = [{"answer": " A"}, {"answer": " C"}]
    speeds = {"radixrt": [1.0, 1.0], "radixrt-nocache": [1.0, 1.0]}
    runs = FakeRuns(speeds, {"radixrt": [SAME, SAME], "radixrt-nocache": [SAME, differs]})
    entry = _run(monkeypatch, runs, rounds=2)
    assert entry["crosscheck"]["failed"] == ["radixrt-nocache"]
    assert entry["crosscheck"]["pairs"]["radixrt-nocache"]["identical_programs"] == 1


def test_tables_show_each_ratio_with_its_range_across_rounds(monkeypatch):
    speeds = {"radixrt": [2.0, 1.5, 1.8], "radixrt-nospec": [1.9, 1.6, 1.7]}
    entry = _run(monkeypatch, FakeRuns(speeds, {name: [SAME] * 3 for name in speeds}), rounds=3)
    text = markdown({"workloads": {"few_shot": entry}, "machine": {}, "settings": {"quick": True, "rounds": 3}})
    assert "3 rounds (ratios: the rounds' median" in text
    assert "| few_shot | radixrt-nospec | 1.05x (0.94-1.06) |" in text


def test_rounds_must_be_positive(capsys):
    assert parse_args(["--rounds", "3"]).rounds == 3
    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_dtype_is_bf16_unless_asked_and_only_bf16_or_float32():
    assert parse_args([]).dtype == "bfloat16"
    assert parse_args(["--dtype", "float32"]).dtype == "float32"
    with pytest.raises(SystemExit):
        parse_args(["--dtype", "float16"])


def test_workload_none_runs_the_micro_benchmarks_only():
    assert parse_args(["--workload", "none"]).workloads == []
    assert parse_args(["--workload", "react,json_decode"]).workloads == ["react", "json_decode"]
    with pytest.raises(SystemExit):
        parse_args(["--workload", "none", "--no-micro"])
    with pytest.raises(SystemExit):
        parse_args(["--workload", "nope"])


def test_the_device_flag_and_the_cpu_only_micro_benchmarks(monkeypatch, capsys):
    from radixrt.bench import cli

    monkeypatch.setattr(cli, "_cuda_available", lambda: True)
    assert parse_args(["--device", "cuda", "--no-micro"]).device == "cuda"
    assert parse_args([]).device == "cpu"
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda"])  # the micro-benchmarks run on the CPU
    monkeypatch.setattr(cli, "_cuda_available", lambda: False)
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda", "--no-micro"])
    assert "--device cuda: torch sees no CUDA device here" in capsys.readouterr().err
