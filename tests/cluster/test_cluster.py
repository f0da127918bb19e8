"""`radixrt cluster` end to end: a local Ray instance with 2 replicas of the tiny model, once per module.

Prefix affinity, a DSL program's affinity, the unchanged APIs, a killed replica, and the slot books
of every replica at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("ray.serve", reason="the cluster extra (pip install 'radixrt[cluster]') is not installed")

from radixrt.runtime.config import ServerArgs  # noqa: E402
from radixrt.runtime.server.server_handle import ServerHandle, free_port_pair, server_argv  # noqa: E402
from tests.runtime.server_harness import books_balance, sse_events, wait_until  # noqa: E402

SYSTEM = "You are a terse assistant for the accounting team. " * 12  # ~130 tokens: 8 whole blocks


@pytest.fixture(scope="module")
def cluster(long_tiny_model_dir, tmp_path_factory) -> Iterator[ServerHandle]:
    args = ServerArgs.from_kwargs(
        model=str(long_tiny_model_dir), port=free_port_pair(), kv_slots=24000, max_running_requests=16,
        shutdown_grace=2.0,
    )  # fmt: skip
    flags = ["--replicas", "2", "--replica-threads", "1", "--routing-stats-period", "0.3"]
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "radixrt", "cluster", *server_argv(args), *flags]
    handle = ServerHandle(subprocess.Popen(cmd, env=env), args)
    handle.wait_ready(300)
    yield handle
    assert handle.shutdown(60) == 0


@pytest.fixture(scope="module")
def http(cluster: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.url, timeout=120, trust_env=False) as client:
        yield client


def generate(http: httpx.Client, text: str, headers: dict[str, str] | None = None, **sampling: Any) -> dict:
    body = {"text": text, "sampling_params": {"max_new_tokens": 4, "temperature": 0, **sampling}}
    answer = http.post("/generate", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


def replica_stats(http: httpx.Client) -> dict[str, dict[str, Any]]:
    answer = http.get("/stats")
    assert answer.status_code == 200, answer.text
    return answer.json()["replicas"]


def test_requests_sharing_a_prefix_land_on_the_replica_that_holds_it(http):
    first = generate(http, SYSTEM + "Question 0: what is a ledger?")
    home = first["meta_info"]["replica"]
    time.sleep(0.5)  # published by then (the router also remembers what it routed)
    for i in range(1, 5):
        out = generate(http, SYSTEM + f"Question {i}: what is an invoice number {i}?")
        assert out["meta_info"]["replica"] == home
        assert out["meta_info"]["cached_tokens"] >= 128  # the system prompt's whole blocks were reused
    other = generate(http, "Completely unrelated text about mountains and rivers. " * 12)
    assert other["meta_info"]["cached_tokens"] == 0


def test_a_programs_requests_stay_on_one_replica(http):
    served = {generate(http, f"Turn {i}: {w} " * 20, headers={"X-Radixrt-Program": "prog-1"})["meta_info"]["replica"]
              for i, w in enumerate(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"])}  # fmt: skip
    assert len(served) == 1


def test_dsl_program_over_http_keeps_forks_on_one_replica(cluster):
    import radixrt

    @radixrt.function
    def branches(s):
        s += "Write three words about the sea: " * 5
        forks = s.fork(3)
        for i, f in enumerate(forks):
            f += f"Option {i}:" + radixrt.gen("w", max_tokens=3, temperature=0)
        s += "Done." + radixrt.gen("end", max_tokens=2, temperature=0)
        return [f.get_meta_info("w")["replica"] for f in forks]

    state = branches.run(backend=radixrt.RuntimeEndpoint(cluster.url))
    replicas = {*state.ret_value, state.get_meta_info("end")["replica"]}
    assert len(replicas) == 1


def test_the_apis_are_those_of_radixrt_serve(http):
    body = {"text": SYSTEM + "Stream this.", "sampling_params": {"max_new_tokens": 6, "temperature": 0}, "stream": True}
    with http.stream("POST", "/generate", json=body) as answer:
        events = sse_events(answer)
    assert events and events[-1]["meta_info"]["completion_tokens"] == 6
    model = http.get("/v1/models").json()["data"][0]["id"]
    chat = http.post(
        "/v1/chat/completions", json={"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["completion_tokens"] == 3
    assert http.get("/health").status_code == 200
    metrics = http.get("/metrics").text
    total = sum(s["kv_slots_total"] for s in replica_stats(http).values())
    assert f"{total}" in metrics  # the gauges are the replicas' sums
    bad = http.post("/generate", json={"text": "x", "sampling_params": {"temperature": -1}})
    assert bad.status_code == 400


def test_a_killed_replica_is_replaced_and_its_requests_retried_or_failed_cleanly(http, cluster):
    program = {"X-Radixrt-Program": "doomed"}
    pinned = generate(http, "Pin this program.", headers=program)["meta_info"]["replica"]
    victim_pid = replica_stats(http)[pinned]["replica_pid"]
    long = {"max_new_tokens": 1500, "ignore_eos": True, "temperature": 0}
    stream_body = {"text": "Count forever.", "sampling_params": long, "stream": True}
    whole_body = {"text": "Also count forever.", "sampling_params": long}
    with httpx.Client(base_url=cluster.url, timeout=120, trust_env=False) as other:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            whole = pool.submit(other.post, "/generate", json=whole_body, headers=program)
            with http.stream("POST", "/generate", json=stream_body, headers=program) as answer:
                lines = answer.iter_lines()
                first = next(line for line in lines if line.startswith("data:"))
                assert "error" not in first
                os.kill(victim_pid, signal.SIGKILL)
                rest = [json.loads(line[5:]) for line in lines if line.startswith("data:") and "[DONE]" not in line]
            assert "error" in rest[-1] and "not retried" in rest[-1]["error"]["message"], rest[-1]
            retried = whole.result(timeout=120)
    assert retried.status_code == 200, retried.text
    assert retried.json()["meta_info"]["replica"] != pinned
    assert retried.json()["meta_info"]["completion_tokens"] == 1500
    assert generate(http, "Still serving?")["meta_info"]["completion_tokens"] == 4
    wait_until(lambda: len(replica_stats(http)) == 2 and pinned not in replica_stats(http), timeout=120)
    assert http.get("/stats").json()["cluster"]["retries"] >= 1


def test_zz_slot_books_balance_on_every_replica(http):
    wait_until(lambda: all(books_balance(s) for s in replica_stats(http).values()), timeout=30)
    assert len(replica_stats(http)) == 2
