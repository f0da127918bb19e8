"""What `radixrt serve` measures: latencies, token counts, errors, and the worker's gauges.

The frontend calls `on_output` for every TokenOut and `on_end` once per client request (which
also writes that request's one structured log line); `render` adds the worker's current
numbers (queue, KV slots, grammar compiles) and returns the Prometheus text.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from radixrt.runtime.protocol import TokenOut
from radixrt.runtime.server.metrics import Counter, Gauge, Histogram, Registry

request_log = logging.getLogger("radixrt.requests")

ERROR_KINDS = {400: "invalid_request", 401: "unauthorized", 413: "too_large", 429: "too_many_requests",
               500: "internal", 503: "overloaded"}  # fmt: skip
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
RATE_WINDOW_S = 10.0
# worker stats key -> (gauge name, help)
WORKER_GAUGES = {
    "waiting": ("radixrt_num_requests_waiting", "Requests in the worker's waiting queue."),
    "running": ("radixrt_num_requests_running", "Requests the worker is running."),
    "kv_slots_total": ("radixrt_kv_slots_total", "KV cache size in tokens."),
    "kv_slots_in_use": ("radixrt_kv_slots_used", "KV slots held by running requests."),
    "kv_slots_cached": ("radixrt_kv_slots_cached", "KV slots held only by the radix cache (evictable)."),
    "kv_slots_free": ("radixrt_kv_slots_free", "Free KV slots."),
    "pinned_tokens": ("radixrt_pinned_tokens", "Tokens held in the radix cache by unexpired pins."),
}
WORKER_COUNTERS = {
    "cache_hit_tokens": ("radixrt_cache_hit_tokens_total", "Prompt tokens the worker reused from the radix cache."),
    "retracted": ("radixrt_retracted_requests_total", "Requests sent back to the queue under KV pressure."),
    "forward_tokens": ("radixrt_forward_tokens_total", "Tokens run through the model."),
    "busy_s": ("radixrt_busy_seconds_total", "Seconds the worker spent in model steps (forward and sampling)."),
    "spec_draft_tokens": ("radixrt_spec_draft_tokens_total", "Draft tokens verified (speculative decoding)."),
    "spec_accepted_tokens": ("radixrt_spec_accepted_tokens_total", "Draft tokens the model accepted."),
}
GRAMMAR_COUNTERS = {"compiles": "compiled", "failures": "failed", "hits": "cache_hit", "disk_hits": "disk_hit"}


class RequestClock:
    """Start time and per-sequence progress of one client request."""

    def __init__(self, start: float, streaming: bool):
        self.start = start
        self.streaming = streaming  # the worker sends a non-streamed request's tokens only at its end
        self.last: dict[str, float] = {}  # worker rid -> time of its latest output with tokens
        self.outs: dict[str, TokenOut] = {}  # worker rid -> its latest output (counts are cumulative)


class ServerMetrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        reg = self.registry = Registry()
        self.ttft = reg.add(Histogram("radixrt_time_to_first_token_seconds",
                                      "Arrival to the first token, streamed requests."))  # fmt: skip
        self.itl = reg.add(Histogram("radixrt_inter_token_latency_seconds",
                                     "Time between tokens of a sequence, streamed requests.", ITL_BUCKETS))  # fmt: skip
        self.e2e = reg.add(Histogram("radixrt_e2e_request_latency_seconds", "Arrival to last token, served requests."))
        self.requests = reg.add(Counter("radixrt_requests_total", "Client requests that ended.", ["outcome"]))
        self.finished = reg.add(Counter("radixrt_sequences_finished_total", "Sequences by finish reason.", ["reason"]))
        self.prompt_tokens = reg.add(Counter("radixrt_prompt_tokens_total", "Prompt tokens of admitted sequences."))
        self.cached_tokens = reg.add(Counter("radixrt_cached_prompt_tokens_total", "Prompt tokens found cached."))
        self.generation_tokens = reg.add(Counter("radixrt_generation_tokens_total", "Tokens generated."))
        self.errors = reg.add(Counter("radixrt_request_errors_total", "Error replies by kind.", ["kind"]))
        self.restarts = reg.add(Counter("radixrt_worker_restarts_total", "Worker processes restarted."))
        self.in_flight = reg.add(Gauge("radixrt_requests_in_flight", "Client requests the frontend is serving."))
        self.worker_up = reg.add(Gauge("radixrt_worker_up", "1 while the worker process answers."))
        rate_help = f"Tokens generated per second over the last {RATE_WINDOW_S:g}s."
        self.tokens_per_s = reg.add(Gauge("radixrt_generation_tokens_per_second", rate_help))
        self.worker_gauges = {k: reg.add(Gauge(n, h)) for k, (n, h) in WORKER_GAUGES.items()}
        self.worker_counters = {k: reg.add(Counter(n, h)) for k, (n, h) in WORKER_COUNTERS.items()}
        self.grammar = reg.add(Counter("radixrt_grammar_compiles_total", "Grammar lookups by result.", ["result"]))
        self.grammar_seconds = reg.add(Counter("radixrt_grammar_compile_seconds_total", "Time spent compiling."))
        salt_help = "by cache salt (a short hash; 'none': unsalted, 'other': past the label cap)"
        self.salt_hits = reg.add(Counter("radixrt_cache_hit_tokens_by_salt_total",
                                         f"Prompt tokens reused from the radix cache, {salt_help}.", ["salt"]))  # fmt: skip
        self.salt_prompts = reg.add(Counter("radixrt_prompt_tokens_by_salt_total",
                                            f"Prompt tokens admitted, {salt_help}.", ["salt"]))  # fmt: skip
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) within the rate window

    # ---- requests ------------------------------------------------------------------------

    def start(self, streaming: bool = True) -> RequestClock:
        return RequestClock(self.clock(), streaming)

    def on_output(self, clock: RequestClock, out: TokenOut) -> None:
        now = self.clock()
        if out.rid not in clock.outs:
            self.prompt_tokens.inc(out.prompt_tokens)
            self.cached_tokens.inc(out.cached_tokens)
        clock.outs[out.rid] = out
        if out.finish_reason is not None:
            self.finished.inc(reason=str(out.finish_reason.get("type", "unknown")))
        if not out.new_ids:
            return
        previous = clock.last.get(out.rid)
        if clock.streaming and previous is None:
            self.ttft.observe(now - clock.start)
        elif clock.streaming:
            self.itl.observe((now - previous) / len(out.new_ids))
        clock.last[out.rid] = now
        self.generation_tokens.inc(len(out.new_ids))
        self._recent.append((now, len(out.new_ids)))

    def on_end(self, clock: RequestClock, rid: str, outcome: str, status: int | None = None) -> None:
        """Count one ended client request (served, failed or aborted) and log its line."""
        latency = self.clock() - clock.start
        self.requests.inc(outcome=outcome)
        if outcome == "served":
            self.e2e.observe(latency)
        if status is not None:
            self.count_error(status)
        outs = list(clock.outs.values())
        fields: dict[str, Any] = {
            "rid": rid,
            "outcome": outcome,
            "prompt_tokens": max((o.prompt_tokens for o in outs), default=0),
            "cached_tokens": max((o.cached_tokens for o in outs), default=0),
            "completion_tokens": sum(o.completion_tokens for o in outs),
            "finish_reason": ",".join(str((o.finish_reason or {}).get("type", "none")) for o in outs) or "none",
            "latency_s": f"{latency:.3f}",
        }
        if status is not None:
            fields["status"] = status
        request_log.info("request %s", " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items()))

    def count_error(self, status: int) -> None:
        self.errors.inc(kind=ERROR_KINDS.get(status, f"http_{status}"))

    def tokens_per_second(self) -> float:
        horizon = self.clock() - RATE_WINDOW_S
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / RATE_WINDOW_S

    # ---- exposition ----------------------------------------------------------------------

    def render(self, in_flight: int, worker: dict[str, Any] | None) -> str:
        """The Prometheus text; `worker` is the worker's stats, or None while it is down."""
        self.in_flight.set(in_flight)
        self.worker_up.set(1.0 if worker is not None else 0.0)
        self.tokens_per_s.set(self.tokens_per_second())
        for key, gauge in self.worker_gauges.items():
            gauge.set(float((worker or {}).get(key, 0)))
        for key, counter in self.worker_counters.items():
            if worker is not None:
                counter.set_total(float(worker.get(key, 0)))
        grammar = (worker or {}).get("grammar")
        if isinstance(grammar, dict):
            for key, result in GRAMMAR_COUNTERS.items():
                self.grammar.set_total(float(grammar.get(key, 0)), result=result)
            self.grammar_seconds.set_total(float(grammar.get("compile_seconds", 0.0)))
        for label, counts in ((worker or {}).get("cache_by_salt") or {}).items():
            self.salt_hits.set_total(float(counts["cache_hit_tokens"]), salt=label)
            self.salt_prompts.set_total(float(counts["prompt_tokens"]), salt=label)
        return self.registry.render()


def _logfmt(value: Any) -> str:
    text = str(value)
    return text if text and not any(c in text for c in ' ="\n') else '"' + text.replace('"', '\\"') + '"'
