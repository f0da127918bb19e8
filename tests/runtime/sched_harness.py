"""Drive the real Scheduler synchronously through the in-process seam (no threads, no sockets)."""

from __future__ import annotations

import itertools
from concurrent import futures
from typing import Any

from radixrt.runtime.config import ServerArgs
from radixrt.runtime.protocol import ErrorOut, SamplingParams, StatsOut, TokenBatch, TokenizedRequest
from radixrt.runtime.scheduler.in_process_io import InProcessIO
from radixrt.runtime.scheduler.loop import Scheduler

_rids = itertools.count()
GRAMMAR_WAIT_S = 120  # a cold compile on a loaded 2-core machine took seconds, longer than 10,000 idle steps


class Harness:
    def __init__(self, model_dir, grammar_compiler: Any = None, **args: Any):
        args.setdefault("kv_slots", 4096)
        args.setdefault("dtype", "float32")
        self.io = InProcessIO()
        server_args = ServerArgs(model=str(model_dir), **args)
        self.sched = Scheduler(server_args, self.io, model_dir=str(model_dir), grammar_compiler=grammar_compiler)
        self.io.outbox.get()  # WorkerReady
        self.outputs: dict[str, list[int]] = {}
        self.finals: dict[str, Any] = {}
        self.errors: dict[str, ErrorOut] = {}

    def request(self, ids: list[int], max_new_tokens: int = 8, rid: str | None = None, **kw: Any) -> str:
        rid = rid or f"r{next(_rids)}"
        params = {k: kw.pop(k) for k in list(kw) if k in SamplingParams.__struct_fields__}
        params.setdefault("temperature", 0.0)
        msg = TokenizedRequest(
            rid=rid, input_ids=ids, sampling=SamplingParams(max_new_tokens=max_new_tokens, **params), **kw
        )
        self.sched.handle(msg)
        self.outputs[rid] = []
        return rid

    def run(self, max_steps: int = 10_000, check_every_step: bool = True) -> None:
        for _ in range(max_steps):
            busy = self.sched.step()
            self.drain()
            if check_every_step:
                self.sched.cache.check(self.sched.running)
            if busy or self.sched.running:
                continue
            compiling = [r.grammar_future for r in self.sched.waiting if r.grammar_future is not None]
            if compiling:  # nothing to run until a grammar compiles: wait for it, not a step count
                futures.wait(compiling, timeout=GRAMMAR_WAIT_S, return_when=futures.FIRST_COMPLETED)
            elif not self.sched.waiting:
                return
        raise AssertionError("scheduler did not finish")

    def drain(self) -> None:
        while not self.io.outbox.empty():
            msg = self.io.outbox.get()
            if isinstance(msg, TokenBatch):
                for out in msg.outs:
                    self.outputs[out.rid].extend(out.new_ids)
                    if out.finish_reason is not None:
                        self.finals[out.rid] = out
            elif isinstance(msg, ErrorOut):
                self.errors[msg.rid] = msg
            elif isinstance(msg, StatsOut):
                self.last_stats = msg.stats

    def stats(self) -> dict[str, Any]:
        return self.sched.stats()

    def assert_books_balance(self) -> None:
        s = self.stats()
        assert s["kv_slots_free"] + s["kv_slots_cached"] + s["kv_slots_in_use"] == s["kv_slots_total"], s
        self.sched.cache.check(self.sched.running)
