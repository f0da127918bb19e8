"""The Prometheus text writer, the server's metric set and its request log line (no server)."""

from __future__ import annotations

import logging

import pytest

from radixrt.runtime.protocol import TokenOut
from radixrt.runtime.server.metrics import Counter, Gauge, Histogram, Registry
from radixrt.runtime.server.server_metrics import ServerMetrics
from tests.runtime.prometheus_text import parse


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_counters_gauges_and_histograms_render_in_the_strict_text_format():
    reg = Registry()
    errors = reg.add(Counter("x_errors_total", "Errors\nby kind \\ here.", ["kind"]))
    errors.inc(kind='bad "quote"\nline')
    errors.inc(2, kind="plain")
    reg.add(Gauge("x_queue", "Queue.")).set(3.5)
    hist = reg.add(Histogram("x_latency_seconds", "Latency.", buckets=(0.1, 1.0)))
    for v in (0.05, 0.1, 0.5, 7.0):
        hist.observe(v)
    fam = parse(reg.render())
    assert fam["x_errors_total"].type == "counter" and fam["x_errors_total"].help == "Errors\nby kind \\ here."
    assert fam["x_errors_total"].value(kind='bad "quote"\nline') == 1
    assert fam["x_errors_total"].value(kind="plain") == 2
    assert fam["x_queue"].value() == 3.5
    lat = fam["x_latency_seconds"]
    assert [lat.value("x_latency_seconds_bucket", le=le) for le in ("0.1", "1", "+Inf")] == [2, 3, 4]
    assert lat.value("x_latency_seconds_count") == 4 and lat.value("x_latency_seconds_sum") == pytest.approx(7.65)


def test_unlabelled_counters_start_at_zero_and_only_go_up():
    reg = Registry()
    c = reg.add(Counter("x_total", "X."))
    assert parse(reg.render())["x_total"].value() == 0
    with pytest.raises(ValueError):
        c.inc(-1)
    with pytest.raises(ValueError):
        c.inc(kind="unknown label")


@pytest.mark.parametrize(
    "text",
    [
        "# TYPE a counter\na 1\na 2\n",  # duplicate series
        "# TYPE a counter\na -1\n",  # negative counter
        "a 1\n# TYPE a counter\n",  # TYPE after samples
        '# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x="1"} 2\n',  # family split in two
        '# TYPE h histogram\nh_bucket{le="1"} 3\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 2\n',
        "# TYPE a gauge\na{x=1} 1\n",  # unquoted label value
        "# TYPE a gauge\na one\n",
        "# TYPE a gauge\na 1",  # no final newline
    ],
)
def test_the_test_parser_rejects_what_prometheus_rejects(text):
    with pytest.raises(ValueError):
        parse(text)


def out(rid: str, new: int, done: str | None = None, prompt: int = 5, cached: int = 2, total: int = 0) -> TokenOut:
    return TokenOut(rid=rid, new_ids=list(range(new)), finish_reason={"type": done} if done else None,
                    prompt_tokens=prompt, cached_tokens=cached, completion_tokens=total)  # fmt: skip


def test_request_latencies_and_token_counts_are_measured_per_sequence(caplog):
    clock = FakeClock()
    m = ServerMetrics(clock)
    req = m.start(streaming=True)
    clock.now += 0.3
    m.on_output(req, out("a", 1, total=1))
    clock.now += 0.1
    m.on_output(req, out("a", 2, total=3))
    clock.now += 0.2
    m.on_output(req, out("a", 1, "length", total=4))
    with caplog.at_level(logging.INFO, logger="radixrt.requests"):
        m.on_end(req, "http3/my id", "served")
    assert m.ttft.count == 1 and m.ttft.sum == pytest.approx(0.3)
    assert m.itl.count == 2 and m.itl.sum == pytest.approx(0.05 + 0.2)
    assert m.e2e.sum == pytest.approx(0.6)
    assert (m.prompt_tokens.get(), m.cached_tokens.get(), m.generation_tokens.get()) == (5, 2, 4)
    assert m.finished.get(reason="length") == 1 and m.requests.get(outcome="served") == 1
    assert caplog.messages == [
        'request rid="http3/my id" outcome=served prompt_tokens=5 cached_tokens=2 completion_tokens=4 '
        "finish_reason=length latency_s=0.600"
    ]


def test_a_request_that_does_not_stream_has_no_token_latencies_but_counts_its_tokens():
    clock = FakeClock()
    m = ServerMetrics(clock)
    req = m.start(streaming=False)
    clock.now += 2
    m.on_output(req, out("a", 7, "stop", total=7))
    m.on_end(req, "r", "served")
    assert m.ttft.count == 0 and m.itl.count == 0 and m.e2e.sum == 2
    assert m.generation_tokens.get() == 7


def test_a_failed_request_counts_its_error_kind_and_logs_its_status(caplog):
    m = ServerMetrics(FakeClock())
    with caplog.at_level(logging.INFO, logger="radixrt.requests"):
        m.on_end(m.start(), "zmq01/r", "failed", 503)
    assert m.errors.get(kind="overloaded") == 1 and m.e2e.count == 0
    assert "outcome=failed" in caplog.messages[0] and caplog.messages[0].endswith("status=503")


def test_render_mirrors_the_worker_and_reports_it_down_without_stats():
    clock = FakeClock()
    m = ServerMetrics(clock)
    m.on_output(m.start(), out("a", 20))
    worker = {"waiting": 3, "running": 2, "kv_slots_total": 100, "kv_slots_in_use": 10, "kv_slots_cached": 30,
              "kv_slots_free": 60, "cache_hit_tokens": 42, "retracted": 1, "forward_tokens": 99, "busy_s": 1.5,
              "spec_draft_tokens": 40, "spec_accepted_tokens": 31,
              "grammar": {"compiles": 2, "failures": 1, "hits": 5, "compile_seconds": 0.25}}  # fmt: skip
    fam = parse(m.render(in_flight=4, worker=worker))
    assert fam["radixrt_worker_up"].value() == 1 and fam["radixrt_requests_in_flight"].value() == 4
    assert fam["radixrt_num_requests_waiting"].value() == 3 and fam["radixrt_kv_slots_free"].value() == 60
    assert fam["radixrt_cache_hit_tokens_total"].value() == 42
    assert fam["radixrt_busy_seconds_total"].value() == 1.5
    assert fam["radixrt_spec_draft_tokens_total"].value() == 40
    assert fam["radixrt_spec_accepted_tokens_total"].value() == 31
    assert fam["radixrt_grammar_compiles_total"].value(result="failed") == 1
    assert fam["radixrt_grammar_compile_seconds_total"].value() == 0.25
    assert fam["radixrt_generation_tokens_per_second"].value() == 2.0  # 20 tokens in the 10 s window
    clock.now += 60
    down = parse(m.render(in_flight=0, worker=None))
    assert down["radixrt_worker_up"].value() == 0 and down["radixrt_num_requests_running"].value() == 0
    assert down["radixrt_generation_tokens_per_second"].value() == 0
    assert down["radixrt_cache_hit_tokens_total"].value() == 42  # a counter keeps its last total
