"""What `radixrt serve` shows about itself: /metrics (checked with a strict Prometheus text
parser) whose counters move as requests run, one log line per request, and /debug/cache."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tests.runtime.prometheus_text import Family, parse
from tests.runtime.server_harness import http_client, sse_events, start_server, wait_until

pytestmark = pytest.mark.slow

SVG = "{http://www.w3.org/2000/svg}"
PREFIX = "Observability shared prefix about the radix cache:"


@pytest.fixture(scope="module")
def logged(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    with open(log, "wb") as sink:
        handle = start_server({"stderr": sink}, model=str(tiny_model_dir), log_level="info")
    handle.log = log
    yield handle
    handle.shutdown()


@pytest.fixture(scope="module")
def http(logged):
    with http_client(logged) as client:
        yield client


def metrics(http) -> dict[str, Family]:
    answer = http.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(answer.text)


def value(fams: dict[str, Family], name: str, sample: str | None = None, **labels: str) -> float:
    try:
        return fams[name].value(sample, **labels)
    except KeyError:
        return 0.0


def test_counters_and_histograms_move_as_requests_run(http):
    before = metrics(http)
    body = {"text": PREFIX + " one", "sampling_params": {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}}
    with http.stream("POST", "/generate", json={**body, "stream": True}) as r:
        final = sse_events(r)[-1]["meta_info"]
    assert http.post("/generate", json={"text": "hi", "sampling_params": {"temperature": -1}}).status_code == 400
    after = metrics(http)

    def moved(name: str, sample: str | None = None, **labels: str) -> float:
        return value(after, name, sample, **labels) - value(before, name, sample, **labels)

    assert moved("radixrt_generation_tokens_total") == 6
    assert moved("radixrt_prompt_tokens_total") == final["prompt_tokens"] > 0
    assert moved("radixrt_requests_total", outcome="served") == 1
    assert moved("radixrt_sequences_finished_total", reason="length") == 1
    assert moved("radixrt_request_errors_total", kind="invalid_request") == 1
    ttft, itl = "radixrt_time_to_first_token_seconds", "radixrt_inter_token_latency_seconds"
    assert moved(ttft, ttft + "_count") == 1 and moved(itl, itl + "_count") >= 1
    assert moved("radixrt_e2e_request_latency_seconds", "radixrt_e2e_request_latency_seconds_count") == 1
    assert after["radixrt_generation_tokens_per_second"].value() > 0
    assert after["radixrt_worker_up"].value() == 1 and after["radixrt_requests_in_flight"].value() == 0
    kv = {k: after[f"radixrt_kv_slots_{k}"].value() for k in ("used", "cached", "free", "total")}
    assert kv["used"] == 0 and kv["cached"] + kv["free"] == kv["total"] and kv["cached"] > 0
    assert after["radixrt_num_requests_waiting"].value() == 0 and after["radixrt_num_requests_running"].value() == 0


def test_cache_hits_and_grammar_compiles_are_counted(http):
    before = metrics(http)
    params = {"temperature": 0, "max_new_tokens": 4}
    http.post("/generate", json={"text": PREFIX + " two", "sampling_params": params})
    hit = http.post("/generate", json={"text": PREFIX + " three", "sampling_params": params}).json()["meta_info"]
    http.post("/generate", json={"text": "Digits:", "sampling_params": {**params, "regex": "[0-9]{3}"}})
    after = metrics(http)
    assert hit["cached_tokens"] > 0
    cached = value(after, "radixrt_cached_prompt_tokens_total") - value(before, "radixrt_cached_prompt_tokens_total")
    assert cached >= hit["cached_tokens"]
    assert value(after, "radixrt_cache_hit_tokens_total") >= value(before, "radixrt_cache_hit_tokens_total") + cached
    results = ("compiled", "cache_hit", "disk_hit")
    looked_up = sum(value(after, "radixrt_grammar_compiles_total", result=r) for r in results)
    assert looked_up >= 1


def test_each_finished_request_logs_one_structured_line(logged, http):
    body = {"text": "Log me", "rid": "log-me", "sampling_params": {"temperature": 0, "max_new_tokens": 3}}
    meta = http.post("/generate", json=body).json()["meta_info"]

    def lines() -> list[str]:
        return [line for line in logged.log.read_text().splitlines() if "/log-me " in line]

    wait_until(lambda: lines(), timeout=10)
    (line,) = lines()
    assert "INFO radixrt.requests: request rid=http" in line
    fields = dict(part.split("=", 1) for part in line.split("request ", 1)[1].split())
    assert fields["outcome"] == "served" and fields["finish_reason"] == meta["finish_reason"]["type"]
    assert int(fields["prompt_tokens"]) == meta["prompt_tokens"]
    assert int(fields["cached_tokens"]) == meta["cached_tokens"]
    assert int(fields["completion_tokens"]) == meta["completion_tokens"] == 3
    assert float(fields["latency_s"]) > 0


def test_debug_cache_draws_the_radix_tree_as_svg(http):
    params = {"temperature": 0, "max_new_tokens": 2}
    for tail in (" alpha", " beta"):
        http.post("/generate", json={"text": PREFIX + tail, "sampling_params": params})
    answer = http.get("/debug/cache")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/svg+xml"
    svg = ET.fromstring(answer.text)
    labels = [t.text or "" for t in svg.iter(SVG + "text")]
    assert labels[0].startswith("radix cache:") and any(label.startswith("Observ") for label in labels)
    assert len(list(svg.iter(SVG + "rect"))) >= 3
    small = ET.fromstring(http.get("/debug/cache", params={"max_nodes": 2}).text)
    assert len(list(small.iter(SVG + "rect"))) == 2
