"""The worker's scheduler loop: receive, schedule one mixed batch, run it, send outputs.

Each step gives every running request its pending tokens (1 for decode, a chunk for a long
prefill) and then admits waiting requests in policy order while the token budget, request
rows and KV memory allow. The loop owns all of this state; nothing here takes a lock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from radixrt.errors import RadixRTError
from radixrt.radix_cache.pool import KVPool, ReqToToken
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.protocol import (
    Abort,
    DebugCache,
    ErrorOut,
    FlushCache,
    GetStats,
    StatsOut,
    TokenBatch,
    TokenizedRequest,
    TokenOut,
    WorkerReady,
)
from radixrt.runtime.scheduler.admission import Admission
from radixrt.runtime.scheduler.cache_manager import CacheManager
from radixrt.runtime.scheduler.cache_persistence import CachePersistence
from radixrt.runtime.scheduler.forward_step import ForwardStep
from radixrt.runtime.scheduler.grammar_manager import GrammarManager
from radixrt.runtime.scheduler.output_processor import OutputProcessor
from radixrt.runtime.scheduler.req import Req
from radixrt.runtime.scheduler.speculative import Drafter, new_ngram_index
from radixrt.runtime.server.tokenizer_manager import load_tokenizer
from radixrt.workers.layers.sampler import Sampler

log = logging.getLogger("radixrt.scheduler")


class Scheduler:
    """`grammar_compiler`, when given, builds the grammar compiler instead of the default one."""

    def __init__(
        self,
        args: ServerArgs,
        io: Any,
        runner: Any = None,
        model_dir: str | None = None,
        grammar_compiler: Callable[[], Any] | None = None,
    ):
        self.args = args
        self.io = io
        if runner is None:
            from radixrt.workers.model_store import resolve_model

            model_dir = str(resolve_model(args.model))
        with ThreadPoolExecutor(1) as pool:
            loading = pool.submit(load_tokenizer, model_dir)  # while the model loads
            if runner is None:
                from radixrt.workers.model_runner import ModelRunner

                runner = ModelRunner(
                    model_dir,
                    dtype=args.dtype,
                    device=args.device,
                    load_format=args.load_format,
                    attention_backend=args.attention_backend,
                    quantization=args.quantization,
                    fingerprint_weights=bool(args.cache_dir),
                )
            tokenizer = loading.result()
        self.runner = runner
        cfg = runner.model_config
        self.context_length = args.context_length or cfg.max_position_embeddings
        self.eos_ids = sorted(set(cfg.eos_token_ids) | ({tokenizer.eos_token_id} - {None}))
        num_slots = args.kv_slots or runner.suggest_num_slots(args.mem_fraction)
        layers, kv_heads, head_dim = runner.kv_shape()
        pool = KVPool(num_slots + 1, layers, kv_heads, head_dim, runner.dtype, runner.device)
        table = ReqToToken(args.max_running_requests, self.context_length + 1, runner.device)
        self._capture_graphs(args, pool)
        speculate = args.speculative == "ngram"
        ngrams = new_ngram_index(pool.capacity) if speculate and not args.disable_radix_cache else None
        self.cache = CacheManager(
            pool, table, args.disable_radix_cache, ngrams, args.eviction_policy, args.max_pinned_fraction
        )
        self.persistence = self._load_cache(args) if args.cache_dir else None
        self.grammars = GrammarManager(model_dir, tokenizer, self.eos_ids, cfg.vocab_size, args, grammar_compiler)
        jump_on = not args.disable_jump_forward
        self.drafter = Drafter(self.cache, args.speculative_tokens, self.context_length, jump_on) if speculate else None
        self.forward = ForwardStep(
            runner,
            self.cache,
            Sampler(cfg.vocab_size, seed=args.seed),
            self.eos_ids,
            self.grammars.apply_masks,
            args.batch_invariant,
            self.drafter,
        )
        jump = self._jump_forward if jump_on else None
        self.outputs = OutputProcessor(tokenizer, self.eos_ids, self.context_length, jump, self.cache.uncompute)
        self.admission = Admission(args, self.cache, self.drafter)
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.arrivals = 0
        self.counters = {"requests_served": 0, "decode_steps": 0, "steps": 0, "retracted": 0}
        log.info("worker ready: %d KV slots, context %d, eos %s", pool.capacity, self.context_length, self.eos_ids)
        self.io.send(
            WorkerReady(
                context_length=self.context_length,
                kv_slots=pool.capacity,
                vocab_size=cfg.vocab_size,
                eos_token_ids=self.eos_ids,
            )
        )

    # ---- loop --------------------------------------------------------------------------

    def run_forever(self) -> None:
        while True:
            busy = bool(self.running or self.waiting)
            idle_wait = self.persistence.wait_hint() if self.persistence is not None else None
            msgs = self.io.recv(0 if busy else idle_wait)
            if msgs is None:
                self._stop()
                return
            self.cache.expire_pins()
            for msg in msgs:
                self.handle(msg)
            if not self.step() and not self.running:
                self.cache.check(self.running)
            if self.persistence is not None:
                self.persistence.poll()

    def _stop(self) -> None:
        """Leaving the loop: what running requests computed goes to the tree, the tree to disk."""
        if self.persistence is None:
            return
        for req in list(self.running):
            self.cache.release(req)
        self.persistence.save_now()

    def _capture_graphs(self, args: ServerArgs, pool: KVPool) -> None:
        """Decode graphs on CUDA with flashinfer, unless --disable-cuda-graph (workers/decode_graphs.py)."""
        why_not = "disabled" if args.disable_cuda_graph else getattr(self.runner, "graphs_supported", lambda: "-")()
        if why_not is not None:
            if self.runner.device.type == "cuda":
                log.info("decode steps run eagerly: %s", why_not)
            return
        max_batch = min(args.cuda_graph_max_bs, args.max_running_requests)
        # sequences may share prefix slots, so a batch's indices can outnumber the pool's slots
        max_kv_tokens = min(max_batch * self.context_length, 1 << 23)
        self.runner.capture_decode_graphs(pool, max_batch, max_kv_tokens)

    def _load_cache(self, args: ServerArgs) -> CachePersistence:
        from radixrt import __version__

        if not getattr(self.runner, "weights_fingerprint", None):
            raise ValueError("--cache-dir needs a runner built with fingerprint_weights=True")
        key = {"weights": self.runner.weights_fingerprint, "quantization": args.quantization, "radixrt": __version__}
        persistence = CachePersistence(self.cache, args.cache_dir, key, args.cache_save_interval)
        persistence.load()
        return persistence

    def handle(self, msg: Any) -> None:
        if isinstance(msg, TokenizedRequest):
            self._add_request(msg)
        elif isinstance(msg, Abort):
            self._abort(msg.rid)
        elif isinstance(msg, FlushCache):
            self.io.send(StatsOut(stats=self.cache.flush()))
        elif isinstance(msg, GetStats):
            self.io.send(StatsOut(stats=self.stats()))
        elif isinstance(msg, DebugCache):
            tree = self.cache.view(self.outputs.tokenizer, msg.max_nodes, msg.salt)
            self.io.send(StatsOut(stats={"tree": tree}))

    def step(self) -> bool:
        """Run one batch; False when there was nothing to run."""
        self.grammars.poll(self.waiting, self._fail)
        plan = self.admission.schedule(self.running, self.waiting, self._retract)
        if not plan and self._stuck_behind_pins():
            log.warning("dropped %d pins: a waiting request needs their KV slots", self.cache.pins.drop_all())
            plan = self.admission.schedule(self.running, self.waiting, self._retract)
        if not plan:
            return False
        self.counters["steps"] += 1
        self.counters["decode_steps"] += all(n == 1 + len(req.draft) for req, n in plan)
        prefilled = [req for req, n in plan if n > 1 + len(req.draft)]
        try:
            results = self.forward.run(plan)
        except Exception as exc:  # a failed batch fails its requests, never the loop
            log.exception("forward failed")
            for req, n in plan:
                self.cache.abandon(req, n)
                req.draft = []
                self._fail(req, 500, f"internal error in model forward: {exc}")
            return True
        for req, _ in plan:
            req.draft = []  # verified: accepted drafts are output now, the rest's KV is freed
        for res in results:
            self.outputs.apply(res)
        for req in prefilled:
            if not req.finished:
                self.cache.cache_prefix(req)
        self._send_outputs([req for req, _ in plan])
        return True

    def _stuck_behind_pins(self) -> bool:
        """Nothing runs, so nothing will free slots, yet a waiting request (grammar ready) was not admitted."""
        ready = any(r.grammar_future is None for r in self.waiting)
        return ready and not self.running and len(self.cache.pins) > 0

    # ---- requests ----------------------------------------------------------------------

    def _add_request(self, msg: TokenizedRequest) -> None:
        need = len(msg.input_ids) + msg.sampling.max_new_tokens
        capacity = self.cache.pool.capacity
        if any(r.rid == msg.rid for r in self.running + self.waiting):
            self._error(msg.rid, 400, f"request id {msg.rid!r} is already in use", "rid")
        elif len(self.waiting) >= self.args.max_in_flight:  # backstop: the frontend enforces the limit
            self._error(msg.rid, 503, "the waiting queue is full; retry later")
        elif need > capacity:
            self._error(
                msg.rid,
                400,
                f"prompt ({len(msg.input_ids)}) + max_new_tokens "
                f"({msg.sampling.max_new_tokens}) = {need} tokens exceeds the KV cache ({capacity} slots)",
            )
        else:
            req = Req.from_msg(msg, self.arrivals)
            self.arrivals += 1
            if msg.sampling.grammar_key is None or self._start_grammar(req):
                self.waiting.append(req)

    def _start_grammar(self, req: Req) -> bool:
        """Submit `req`'s grammar; False (the request answered with the error) when that failed."""
        try:
            self.grammars.submit(req)
        except RadixRTError as exc:  # the grammar compiler cannot start: this request fails, the loop goes on
            self._error(req.rid, exc.status, str(exc), exc.param)
            return False
        return True

    def _abort(self, rid: str) -> None:
        for req in self.running + self.waiting:
            if req.rid == rid:
                req.finish_reason = {"type": "abort"}
                self._send_outputs([req])

    def _fail(self, req: Req, status: int, message: str, param: str | None = None) -> None:
        req.finish_reason = {"type": "abort", "message": message}
        self._remove(req)
        self._error(req.rid, status, message, param)

    def _error(self, rid: str, status: int, message: str, param: str | None = None) -> None:
        self.io.send(ErrorOut(rid=rid, status=status, message=message, param=param))

    def _remove(self, req: Req) -> None:
        self.cache.release(req)
        if req in self.running:
            self.running.remove(req)
        if req in self.waiting:
            self.waiting.remove(req)

    def _retract(self, req: Req) -> None:
        """Out of KV memory: send the request back to the queue; its KV stays in the tree."""
        self.cache.release(req)
        self.running.remove(req)
        self.waiting.insert(0, req)
        self.counters["retracted"] += 1
        log.info("retracted %s (%d tokens) to free KV memory", req.rid, req.known)

    def _send_outputs(self, reqs: list[Req]) -> None:
        outs: list[TokenOut] = []
        for req in reqs:
            if req.finished:
                self.counters["requests_served"] += 1
                self._remove(req)
                if req.pin_s > 0 and req.finish_reason.get("type") != "abort":
                    self.cache.pin(req)  # the prompt is in the tree now
            out = self.outputs.token_out(req)
            if out is not None:
                outs.append(out)
        if outs:
            self.io.send(TokenBatch(outs=outs))

    def _jump_forward(self, req: Req) -> None:
        self.grammars.jump_forward(req, self.cache)

    # ---- stats -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        slots = self.cache.stats(self.running)
        return {
            "kv_slots_total": slots.total,
            "kv_slots_free": slots.free,
            "kv_slots_cached": slots.cached,
            "kv_slots_in_use": slots.in_use,
            "running": len(self.running),
            "waiting": len(self.waiting),
            "cache_hit_tokens": self.cache.hit_tokens,
            "prompt_tokens": self.cache.prompt_tokens,
            "cache_by_salt": self.cache.salt_stats(),
            "eviction_policy": self.cache.eviction_name,
            "pins": len(self.cache.pins),
            "pinned_tokens": self.cache.pins.tokens(),
            "pins_capped": self.cache.pins.capped,
            "pins_dropped": self.cache.pins.dropped,
            "forward_tokens": self.forward.forward_tokens,
            "busy_s": self.forward.busy_s,
            "worker_pid": os.getpid(),
            "radix_cache": not self.args.disable_radix_cache,
            "kernels": self.runner.kernels,
            **self.counters,
            **self.grammars.stats(),
            "speculative": self.args.speculative,
            **(self.drafter.stats() if self.drafter is not None else {}),
            **(self.persistence.counters if self.persistence is not None else {}),
        }
