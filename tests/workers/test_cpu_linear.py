"""CPU linears: our kernel against a float64 reference and for row invariance, every candidate
checked on this CPU, and the choice made by measurement (cached, and within 10% of the fastest)."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from radixrt.workers.layers import cpu_kernels, cpu_linear, kernel_tuning, linear_candidates
from radixrt.workers.layers.cpu_linear import CpuLinear, InvarianceSwitch, LinearChoice, LinearPlan, choose
from radixrt.workers.layers.kernel_tuning import Measurement

DTYPES = [torch.bfloat16, torch.float32]


@pytest.fixture(scope="module")
def ops():
    ops = cpu_kernels.load()
    assert ops is not None, "make test builds the kernels first"
    return ops


def reference(x, w, b):
    return F.linear(x.double(), w.double(), None if b is None else b.double())


def tolerance(dtype, expected):
    return (2**-7 if dtype == torch.bfloat16 else 1e-5) * expected.abs().max().item() + 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(16, 32), (40, 77), (33, 1), (576, 1536), (100, 3)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_float64(ops, dtype, n, k, bias):
    gen = torch.Generator().manual_seed(n * k)
    w = (torch.randn(n, k, generator=gen) * 0.1).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    packed = ops.pack_linear_weight(w)
    for m in (1, 2, 7, 8, 9, 70):
        x = torch.randn(m, k, generator=gen).to(dtype)
        got = ops.packed_linear(x, packed, n, k, b)
        expected = reference(x, w, b)
        assert got.dtype == dtype and got.shape == (m, n)
        assert (got.double() - expected).abs().max().item() <= tolerance(dtype, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,bias", [(96, False), (96, True), (95, True)])
def test_a_rows_bits_do_not_depend_on_the_batch_or_the_threads(ops, dtype, k, bias):
    """A few rows and many run different AVX2 kernels (bf16 weights widened per tile past 16 rows,
    float32 in chunks of 6): a row's bits must not tell which."""
    gen = torch.Generator().manual_seed(1)
    w = (torch.randn(200, k, generator=gen) * 0.1).to(dtype)
    b = torch.randn(200, generator=gen).to(dtype) if bias else None
    packed = ops.pack_linear_weight(w)
    x = torch.randn(130, k, generator=gen).to(dtype)
    whole = ops.packed_linear(x, packed, 200, k, b)
    for i in (0, 7, 8, 64, 129):
        assert torch.equal(ops.packed_linear(x[i : i + 1], packed, 200, k, b)[0], whole[i])
    for m in (2, 3, 9, 16, 17, 100):
        assert torch.equal(ops.packed_linear(x[:m], packed, 200, k, b), whole[:m])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(ops.packed_linear(x, packed, 200, k, b), whole)
    finally:
        torch.set_num_threads(threads)


def test_an_empty_batch_gives_an_empty_result(ops):
    packed = ops.pack_linear_weight(torch.randn(20, 8, dtype=torch.bfloat16))
    assert ops.packed_linear(torch.empty(0, 8, dtype=torch.bfloat16), packed, 20, 8, None).shape == (0, 20)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda x, p, b: (x[:, :7], p, b), "x has 7 columns"),
        (lambda x, p, b: (x.float(), p, b), "but the weights are"),
        (lambda x, p, b: (x, p, b[:3]), "bias has 3 elements"),
        (lambda x, p, b: (x[0], p, b), "2-d"),
    ],
)
def test_bad_inputs_raise_clear_errors(ops, change, message):
    x, b = torch.randn(2, 8, dtype=torch.bfloat16), torch.randn(20, dtype=torch.bfloat16)
    packed = ops.pack_linear_weight(torch.randn(20, 8, dtype=torch.bfloat16))
    x, packed, b = change(x, packed, b)
    with pytest.raises(RuntimeError, match=message):
        ops.packed_linear(x, packed, 20, 8, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_candidate_on_this_cpu_matches_the_reference(dtype):
    gen = torch.Generator().manual_seed(2)
    w = (torch.randn(96, 64, generator=gen) * 0.1).to(dtype)
    b = torch.randn(96, generator=gen).to(dtype)
    names = linear_candidates.available(dtype)
    assert "aten" in names and "radixrt" in names
    for name in names:
        state = linear_candidates.PREPARE[name](w)
        for m in (1, 5, 64):
            x = torch.randn(m, 64, generator=gen).to(dtype)
            expected = reference(x, w, b)
            got = linear_candidates.RUN[name](x, state, b)
            assert (got.double() - expected).abs().max().item() <= tolerance(dtype, expected), (name, m)


def test_onednn_is_no_bf16_candidate_where_it_has_no_bf16_path(monkeypatch):
    # on AVX2-only CPUs oneDNN's bf16 weight reorder raises; it must not be tried there
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    assert "onednn" not in linear_candidates.available(torch.bfloat16)
    assert "aten" in linear_candidates.available(torch.bfloat16)


def test_measurement_marks_our_kernel_row_invariant_and_checks_everyone():
    w = torch.randn(64, 64, dtype=torch.bfloat16) * 0.1
    m = kernel_tuning.measure([(w, None)], linear_candidates.available(torch.bfloat16))
    assert m.invariant["radixrt"] is True
    assert set(m.seconds) == set(m.invariant) == set(m.tried)  # all correct on this CPU
    # others far slower than the best at a row count are given up there (with AMX, oneDNN can be
    # that much faster than our kernel), but batch-invariant mode needs every row of an invariant one
    assert set(m.seconds["radixrt"]) == set(kernel_tuning.ROWS)
    # the invariant choice is whichever row-invariant candidate was fastest (oneDNN is invariant and
    # faster than our kernel on some CPUs): one with every row timed, so there always is one
    chosen = choose(m).invariant
    assert m.invariant[chosen] and set(m.seconds[chosen]) == set(kernel_tuning.ROWS)
    assert all(set(timed) <= set(kernel_tuning.ROWS) for timed in m.seconds.values())


def test_timing_gives_up_only_on_candidates_far_slower_than_the_best():
    def sleeper(seconds):
        return lambda x: time.sleep(seconds)

    runs = {"fast": sleeper(0.002), "twice": sleeper(0.004), "far": sleeper(0.002 * 3 * kernel_tuning.GIVE_UP_FACTOR)}
    timed = kernel_tuning._time_rows(runs, torch.zeros(1))
    assert set(timed) == {"fast", "twice"}
    assert timed["fast"] < timed["twice"]
    assert set(kernel_tuning._time_rows(runs, torch.zeros(1), keep={"far"})) == {"fast", "twice", "far"}


def test_the_chosen_candidate_is_within_10_percent_of_the_fastest():
    # the lm_head-like and MLP shapes where candidates differ most; timings are re-measured with
    # the candidates alternating, and a noisy machine gets three tries
    w = torch.randn(1536, 576, dtype=torch.bfloat16) * 0.05
    names = linear_candidates.available(torch.bfloat16)
    states = {c: linear_candidates.PREPARE[c](w) for c in names}
    runs = {c: (lambda x, c=c: linear_candidates.RUN[c](x, states[c], None)) for c in names}
    for rows in (1, 64):
        x = torch.randn(rows, 576, dtype=torch.bfloat16)
        ratios = []
        for _ in range(3):
            chosen = choose(kernel_tuning.measure([(w, None)], names)).fast[rows]
            again = kernel_tuning._time_rows(runs, x)
            ratios.append(again.get(chosen, float("inf")) / min(again.values()))
            if ratios[-1] <= 1.10:
                break
        assert min(ratios) <= 1.10, (rows, ratios)


def test_measurements_are_cached_per_machine_and_a_corrupt_cache_is_measured_again(tmp_path, monkeypatch, quiet_cpus):
    cpu_kernels.load()  # compiled and loaded from the real cache before the timings' cache moves
    monkeypatch.setenv("RADIXRT_KERNEL_CACHE", str(tmp_path))
    w = torch.randn(32, 16, dtype=torch.float32)
    names = linear_candidates.available(torch.float32)
    first = kernel_tuning.cached_measure([(w, None)], names)
    table = json.loads(kernel_tuning.cache_file().read_text())
    assert list(table) == [kernel_tuning.machine_key()]
    entry = table[kernel_tuning.machine_key()][kernel_tuning.shape_key(32, 16, torch.float32, False)]
    entry["seconds"]["aten"]["1"] = 123.0  # a recalled measurement, not a new one, keeps this
    kernel_tuning.cache_file().write_text(json.dumps(table))
    assert kernel_tuning.cached_measure([(w, None)], names).seconds["aten"][1] == 123.0
    assert first.tried == tuple(names)
    kernel_tuning.cache_file().write_text("{not json")
    again = kernel_tuning.cached_measure([(w, None)], names)
    assert again.seconds["aten"][1] != 123.0 and kernel_tuning.cache_file().read_text().startswith("{")


def measurement(seconds, invariant):
    return Measurement(tuple(seconds), seconds, invariant)


def test_choose_takes_the_fastest_per_row_count_and_the_cheapest_invariant_candidate():
    m = measurement(
        {"a": {1: 1.0, 64: 9.0}, "b": {1: 2.0, 64: 3.0}, "c": {1: 0.5, 64: 1.0}},
        {"a": True, "b": True, "c": False},
    )
    choice = choose(m)
    assert choice.fast == {1: "c", 64: "c"}
    assert choice.invariant == "b"  # a is 2x at M1 but 9x at M64; b 4x and 3x
    assert choice.for_rows(1, invariant=True) == "b" and choice.for_rows(1, invariant=False) == "c"
    only_fast = choose(measurement({"a": {1: 1.0, 64: 1.0}, "b": {1: 2.0}}, {"a": False, "b": True}))
    assert only_fast.invariant is None  # b was given up at 64 rows
    assert only_fast.for_rows(64, invariant=True) == "a"


@pytest.mark.parametrize(
    "rows,expected", [(1, 1), (2, 4), (7, 4), (8, 16), (31, 16), (33, 64), (127, 64), (128, 256), (4096, 256)]
)
def test_row_counts_map_to_the_nearest_measured_one_on_a_log_scale(rows, expected):
    assert cpu_linear.nearest_measured(rows, kernel_tuning.ROWS) == expected


def test_a_cpu_linear_switches_to_the_invariant_candidate_when_asked():
    w, b = torch.randn(48, 32, dtype=torch.bfloat16), torch.randn(48, dtype=torch.bfloat16)
    switch = InvarianceSwitch()
    lin = CpuLinear(w, b, LinearChoice(dict.fromkeys(kernel_tuning.ROWS, "aten"), "radixrt"), switch)
    assert set(lin.states) == {"aten", "radixrt"}
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    plain = lin(x)
    switch.on = True
    invariant = lin(x)
    assert torch.equal(invariant[2:3], lin(x[2:3]))
    assert torch.equal(plain, linear_candidates.RUN["aten"](x, w, b))


def test_install_replaces_every_linear_and_reports_the_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIXRT_KERNEL_CACHE", str(tmp_path))
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Sequential(nn.Linear(48, 32, bias=False))).to(torch.bfloat16)
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    expected = model(x)
    plan = cpu_linear.install(model, torch.bfloat16)
    assert isinstance(model[0], CpuLinear) and isinstance(model[2][0], CpuLinear)
    assert set(plan.choices) == {"48x32:bfloat16:bias", "32x48:bfloat16:nobias"}
    assert "batch-invariant:" in plan.summary()
    torch.testing.assert_close(model(x), expected, rtol=2e-2, atol=2e-2)


def test_one_layout_keeps_one_candidate_per_linear():
    plan = LinearPlan()
    assert plan.summary() == "torch"
    w = torch.randn(32, 16, dtype=torch.bfloat16)
    one = cpu_linear.plan_linears({"32x16:bfloat16:nobias": [(w, None)]}, torch.bfloat16, one_layout=True)
    (choice,) = one.choices.values()
    assert len(set(choice.fast.values()) | {choice.invariant}) == 1


def test_timing_rotates_over_enough_linears_to_leave_the_cache():
    llc = kernel_tuning.last_level_cache_bytes()
    assert llc >= 1 << 20
    w = torch.zeros(1024, 1024, dtype=torch.bfloat16)  # 2 MiB each
    many = [(w, None)] * (4 * llc // (2 << 20) + 4)
    chosen = kernel_tuning._cold_set(many)
    assert 2 * llc < len(chosen) * (2 << 20) <= 2 * llc + (2 << 20)
    assert len(kernel_tuning._cold_set(many[:2])) == 2  # fewer than that: all of them
