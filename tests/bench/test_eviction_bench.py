"""The eviction bench on a small trace: both policies replay it with balanced books (replay checks
them), neither beats a cache that never evicts, and slru keeps more of the reused system prompts."""

from __future__ import annotations

from radixrt.bench.eviction import Trace, main, make_trace, run


def test_slru_beats_lru_on_a_small_skewed_trace_and_both_stay_below_no_eviction():
    report = run(Trace(tenants=24, requests=600, prompt_tokens=200), [3000], ["lru", "slru"])
    rates = {r["policy"]: r["hit_rate"] for r in report["results"]}
    assert 0 < rates["lru"] < rates["slru"] <= report["optimal_hit_rate"] < 1


def test_drifting_popularity_changes_the_trace_and_the_cli_writes_json(tmp_path, capsys):
    steady, drifting = make_trace(Trace(requests=400)), make_trace(Trace(requests=400, shift_every=100))
    assert [r.tenant for r in steady[:100]] == [r.tenant for r in drifting[:100]]
    assert [r.tenant for r in steady] != [r.tenant for r in drifting]
    out = tmp_path / "ev.json"
    assert main(["--requests", "50", "--kv-slots", "4096", "--policies", "slru", "--out", str(out)]) == 0
    assert '"policy": "slru"' in out.read_text() and '"policy": "slru"' in capsys.readouterr().out
