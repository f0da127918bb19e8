"""A small run of benchmarks/load_test.py: DSL programs and streaming clients (some hanging up)
at once give exactly the outputs of a quiet run, and leave the KV books balanced."""

from __future__ import annotations

import pytest

from benchmarks.load_test import load_test, parse_args
from tests.runtime.server_harness import start_server

pytestmark = pytest.mark.slow


def test_a_loaded_server_gives_quiet_run_outputs_and_leaks_nothing(tiny_model_dir):
    opts = parse_args(["--programs", "25", "--streams", "10", "--disconnect", "0.3", "--max-tokens", "8",
                       "--request-timeout", "120", "--seed", "3"])  # fmt: skip
    with start_server(model=str(tiny_model_dir), kv_slots=8192, max_running_requests=16) as server:
        report = load_test(server.url, server.zmq_address, opts)
        assert server.shutdown() == 0
    assert report["failures"] == [] and report["mismatches"] == 0, report
    assert report["streams_hung_up"] > 0
    assert report["server_requests_failed"] == 0 and report["idle_after"]
    kv = report["kv_after"]
    assert kv["kv_slots_in_use"] == 0 and kv["kv_slots_free"] + kv["kv_slots_cached"] == kv["kv_slots_total"]
    assert set(report["program_kinds"]) == {"fewshot", "chat", "tot", "json", "rag"}
