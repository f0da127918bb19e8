"""`Program`: a decorated program function with `run`, `run_batch`, `trace` (SGLang's names)."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import Any

from radixrt.lang.backends.base import Backend
from radixrt.lang.interpreter import StreamExecutor
from radixrt.lang.sampling import GenOptions
from radixrt.lang.state import ProgramState
from radixrt.lang.tracer import TracedProgram, trace_program
from radixrt.runtime.protocol import SamplingParams

logger = logging.getLogger(__name__)

_SAMPLING_KEYS = {f.name for f in fields(GenOptions)}
_IGNORED_KEYS = {"return_text_in_logprobs", "use_thread"}  # accepted for SGLang compatibility
_MAX_AUTO_THREADS = 128


class _Defaults:
    """Process-wide default backend, set by `set_default_backend` (like SGLang's global config)."""

    backend: Backend | None = None


def set_default_backend(backend: Any) -> None:
    """Backend for programs run without `backend=`: a RuntimeEndpoint or a Runtime."""
    _Defaults.backend = backend


def get_default_backend() -> Backend | None:
    return _Defaults.backend


def resolve_backend(backend: Any) -> Backend:
    backend = backend if backend is not None else _Defaults.backend
    backend = getattr(backend, "endpoint", backend)  # a Runtime exposes its RuntimeEndpoint
    if backend is None:
        raise RuntimeError("no backend: pass backend=... or call radixrt.set_default_backend(...)")
    return backend


def split_kwargs(kwargs: dict[str, Any]) -> tuple[GenOptions, dict[str, Any]]:
    """Run keywords -> (sampling defaults, program arguments)."""
    sampling = {k: v for k, v in kwargs.items() if k in _SAMPLING_KEYS and v is not None}
    args = {k: v for k, v in kwargs.items() if k not in _SAMPLING_KEYS | _IGNORED_KEYS}
    return GenOptions.build(**sampling), args


class Program:
    """What `@function` returns. Calling it runs it (or, given a state, inlines it)."""

    def __init__(self, func: Callable, num_api_spec_tokens: int | None = None, bind_arguments: dict | None = None):
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens  # accepted for SGLang compatibility
        self.bind_arguments = bind_arguments or {}
        functools.update_wrapper(self, func)

    def bind(self, **kwargs: Any) -> Program:
        return Program(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    def run(self, *args: Any, stream: bool = False, backend: Any = None, **kwargs: Any) -> ProgramState:
        """Run once. Sampling keywords (max_new_tokens, temperature, ...) are defaults for every
        gen; the others are program arguments. A server error raises here (stream=False) or
        from the stream iterators (stream=True)."""
        defaults, program_kwargs = split_kwargs(kwargs)
        state = self._start(resolve_backend(backend), defaults, stream)
        call = functools.partial(self._body, state, args, {**self.bind_arguments, **program_kwargs})
        if stream:
            threading.Thread(target=call, name="radixrt-program-body", daemon=True).start()
            return state
        call()
        _raise_first_error(state)
        return state

    def run_batch(
        self,
        batch_kwargs: list[dict[str, Any]],
        *,
        backend: Any = None,
        num_threads: int | str = "auto",
        progress_bar: bool = False,
        generator_style: bool = False,
        **sampling: Any,
    ) -> list[ProgramState] | Iterator[ProgramState]:
        """Run many programs with up to `num_threads` in flight, so the server batches them by
        shared prefix. Errors stay in each program's state (`state.error()`; reading fails)."""
        backend = resolve_backend(backend)
        defaults, extra = split_kwargs(sampling)
        if extra:
            raise TypeError(f"run_batch got unexpected keywords {sorted(extra)}")
        if len(batch_kwargs) > 1:
            self._prefetch_prefix(backend)
        threads = min(len(batch_kwargs), _MAX_AUTO_THREADS) if num_threads == "auto" else int(num_threads)
        pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="radixrt-batch")
        futures = [pool.submit(self._run_quiet, backend, defaults, kw) for kw in batch_kwargs]
        pool.shutdown(wait=False)
        if generator_style:
            return (f.result() for f in futures)
        if progress_bar:
            from tqdm import tqdm

            for f in tqdm(futures, total=len(futures)):
                f.result()
        return [f.result() for f in futures]

    def trace(self, *args: Any, backend: Any = None, **kwargs: Any) -> TracedProgram:
        """The program's IR graph for these arguments (unbound ones become placeholders).
        No model call is made."""
        _, program_kwargs = split_kwargs(kwargs)
        return trace_program(self.func, args, {**self.bind_arguments, **program_kwargs})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from radixrt.lang.state import StateBase

        if args and isinstance(args[0], StateBase):
            return self.func(*args, **{**self.bind_arguments, **kwargs})  # a sub-program on `s`
        return self.run(*args, **kwargs)

    # ---- internals --------------------------------------------------------------------------

    def _start(self, backend: Backend, defaults: GenOptions, stream: bool) -> ProgramState:
        return ProgramState(StreamExecutor(backend, defaults, stream))

    def _body(self, state: ProgramState, args: tuple, kwargs: dict[str, Any]) -> None:
        ex = state.stream_executor
        try:
            state.ret_value = self.func(state, *args, **kwargs)
        except BaseException as e:
            ex.fail(e)
            if not ex.stream:
                raise
        finally:
            ex.end()
            ex.wait_finished()

    def _run_quiet(self, backend: Backend, defaults: GenOptions, kwargs: dict[str, Any]) -> ProgramState:
        state = self._start(backend, defaults, False)
        try:
            self._body(state, (), {**self.bind_arguments, **kwargs})
        except Exception:  # the error stays in the state; the batch goes on
            logger.debug("a program of the batch failed", exc_info=True)
        return state

    def _prefetch_prefix(self, backend: Backend) -> None:
        """Cache the text every program of a batch starts with, once, before they all run."""
        try:
            if not backend.caches_prefixes():
                return
            traced = trace_program(self.func, (), dict(self.bind_arguments), prefix_only=True)
            prefix = traced.constant_prefix(backend.chat_template)
            if prefix:
                backend.generate(prefix, SamplingParams(max_new_tokens=0))
        except Exception:  # an optimization only: the programs run without it
            logger.debug("no shared prefix sent ahead of the batch", exc_info=True)


def _raise_first_error(state: ProgramState) -> None:
    error = state.error()
    if error is not None:
        raise error
