"""`radixrt.Engine`: the scheduler loop and model in this process, SGLang's offline Engine API."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator
from typing import Any

import msgspec

from radixrt.errors import InvalidRequest, RadixRTError, error_for_status
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.protocol import (
    Abort,
    ErrorOut,
    ErrorReply,
    FlushCache,
    GenerateChunk,
    GenerateRequest,
    GenerateResult,
    GetStats,
    SamplingParams,
    StatsOut,
    TokenBatch,
    WorkerReady,
)
from radixrt.runtime.scheduler.in_process_io import InProcessIO
from radixrt.runtime.scheduler.loop import Scheduler
from radixrt.runtime.server.tokenizer_manager import TokenizerManager
from radixrt.workers.openmp import release_thread_pool

SAVE_TIMEOUT_S = 600.0  # what shutdown waits for the loop when it saves the cache


class Engine:
    """Run radixrt in-process: `Engine(model="default", **server_args).generate(...)`."""

    def __init__(self, model: str = "default", **server_args: Any):
        from radixrt.workers.model_store import resolve_model

        self.args = ServerArgs.from_kwargs(model=model, **server_args)
        self.model_dir = str(resolve_model(self.args.model))
        self.io = InProcessIO()
        self.scheduler: Scheduler | None = None
        # NOTE: the model is built on the thread that runs it, and the caller's OpenMP pool (any
        # parallel torch op on the caller's thread leaves one) is released here and on every
        # submit: while a second pool exists, every parallel op of the engine's thread pays tens
        # of microseconds more (workers/openmp.py; decode at batch 64 ran 1.2x slower).
        release_thread_pool()
        self._loop = threading.Thread(target=self._run_scheduler, name="radixrt-scheduler", daemon=True)
        self._loop.start()
        ready = self.io.outbox.get()
        if isinstance(ready, BaseException):
            self._loop.join()
            raise ready
        assert isinstance(ready, WorkerReady)
        self.tm = TokenizerManager(self.model_dir, self.args, ready.context_length)
        self._ids = itertools.count()
        self._routes: dict[str, tuple[Any, queue.Queue]] = {}
        self._control: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._router = threading.Thread(target=self._route_outputs, name="radixrt-router", daemon=True)
        self._router.start()

    # ---- public API ----------------------------------------------------------------------

    def generate(
        self,
        prompt: str | list[str] | None = None,
        sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None,
        input_ids: list[int] | list[list[int]] | None = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        stream: bool = False,
    ) -> dict[str, Any] | list[dict[str, Any]] | Iterator[dict[str, Any]]:
        """One prompt → one dict (`text`, `output_ids`, `meta_info`); a list → a list (n > 1
        expands each prompt to n dicts). `stream=True` (one prompt) yields chunks whose `text`
        is the new text."""
        batched = isinstance(prompt, list) or (bool(input_ids) and isinstance(input_ids[0], list))
        prompts = prompt if isinstance(prompt, list) else [prompt] if prompt is not None else None
        ids = input_ids if (input_ids and isinstance(input_ids[0], list)) else [input_ids] if input_ids else None
        count = len(prompts if prompts is not None else ids or [])
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params or {}] * count
        reqs = [
            self._request(
                None if prompts is None else prompts[i],
                None if ids is None else ids[i],
                params[i],
                return_logprob,
                logprob_start_len,
                top_logprobs_num,
                stream,
            )
            for i in range(count)
        ]
        if stream:
            if batched:
                raise InvalidRequest("stream=True takes one prompt", "stream")
            return self._stream(reqs[0])
        queues = [self._submit(r) for r in reqs]
        results = [item for r, q in zip(reqs, queues) for item in self._collect(r, q)]
        return results if batched or len(results) > 1 else results[0]

    def flush_cache(self) -> bool:
        return bool(self._control_call(FlushCache()).stats.get("flushed"))

    def stats(self) -> dict[str, Any]:
        return self._control_call(GetStats()).stats

    def shutdown(self) -> None:
        """Stop the loop; with `cache_dir` it saves the radix cache first (that may take a while)."""
        self.io.close()
        self._loop.join(timeout=SAVE_TIMEOUT_S if self.args.cache_dir else 30)
        self.io.outbox.put(None)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ---- plumbing ------------------------------------------------------------------------

    def _request(self, text, ids, params, return_logprob, start, top_n, stream) -> GenerateRequest:
        try:
            sampling = msgspec.convert({k: v for k, v in (params or {}).items() if v is not None}, SamplingParams)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"invalid sampling_params: {exc}", "sampling_params") from None
        return GenerateRequest(
            rid=f"engine-{next(self._ids)}",
            text=text,
            input_ids=ids,
            sampling=sampling,
            return_logprob=return_logprob,
            logprob_start_len=-1 if start is None else start,
            top_logprobs_num=top_n or 0,
            stream=stream,
        )

    def _submit(self, req: GenerateRequest) -> queue.Queue:
        release_thread_pool()
        tokenized = self.tm.tokenize(req)
        state = self.tm.new_state(req, tokenized)
        q: queue.Queue = queue.Queue()
        with self._lock:
            for t in tokenized:
                self._routes[t.rid] = (state, q)
        for t in tokenized:
            self.io.inbox.put(t)
        return q

    def _collect(self, req: GenerateRequest, q: queue.Queue) -> list[dict[str, Any]]:
        out = []
        while True:
            msg = q.get()
            if isinstance(msg, ErrorReply):
                raise _error(msg)
            if isinstance(msg, GenerateResult):
                out.append(_as_dict(msg))
                if len(out) == max(1, req.sampling.n):
                    return out

    def _stream(self, req: GenerateRequest) -> Iterator[dict[str, Any]]:
        q = self._submit(req)
        done = False
        try:
            while not done:
                msg = q.get()
                if isinstance(msg, ErrorReply):
                    raise _error(msg)
                if isinstance(msg, GenerateChunk):
                    yield _as_dict(msg)
                done = isinstance(msg, GenerateResult)
        finally:
            if not done:
                self.io.inbox.put(Abort(rid=req.rid))

    def _run_scheduler(self) -> None:
        try:
            self.scheduler = Scheduler(self.args, self.io, model_dir=self.model_dir)
        except BaseException as exc:  # handed to __init__, which raises it in the caller
            self.io.outbox.put(exc)
            return
        self.scheduler.run_forever()

    def _control_call(self, msg: Any) -> StatsOut:
        self.io.inbox.put(msg)
        return self._control.get(timeout=60)

    def _route_outputs(self) -> None:
        while (msg := self.io.outbox.get()) is not None:
            if isinstance(msg, StatsOut):
                self._control.put(msg)
            elif isinstance(msg, TokenBatch):
                for out in msg.outs:
                    self._deliver(out.rid, lambda state, out=out: state.on_output(out), out.finish_reason)
            elif isinstance(msg, ErrorOut):
                self._deliver(msg.rid, lambda state, msg=msg: [state.on_error(msg)], True)

    def _deliver(self, rid: str, handle: Any, final: Any) -> None:
        with self._lock:
            route = self._routes.pop(rid, None) if final else self._routes.get(rid)
        if route is not None:
            state, q = route
            for item in handle(state):
                q.put(item)


def _as_dict(msg: GenerateChunk | GenerateResult) -> dict[str, Any]:
    return {"text": msg.text, "output_ids": msg.output_ids, "meta_info": msg.meta_info}


def _error(reply: ErrorReply) -> RadixRTError:
    return error_for_status(reply.status, reply.message, reply.param)
