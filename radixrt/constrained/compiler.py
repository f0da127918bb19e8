"""Compile grammars off the caller's thread, under a time and size budget, with memory and disk caches.

    compiler = GrammarCompiler(model_dir, eos_token_ids=[2], vocab_size=49152, cache_dir=Path(...))
    future = compiler.submit("json_schema", schema)   # never blocks
    grammar = future.result()                         # CompiledGrammar, or raises InvalidRequest
    matcher = grammar.new_matcher()

Each compile thread owns one child process (compile_process.py); a compile that overruns the time
limit is stopped by killing that child.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import outlines_core

from radixrt.constrained import sources
from radixrt.constrained.cache import ByteLRU, DiskCache
from radixrt.constrained.compile_process import (
    CompileError,
    CompileProcess,
    CompileTimeout,
)
from radixrt.constrained.grammar import CompiledGrammar
from radixrt.constrained.vocabulary import load_token_table
from radixrt.errors import InvalidRequest

_OUTLINES_VERSION = version("outlines-core")


class GrammarCompiler:
    """Compiles (kind, source) grammars for one model's vocabulary; see the module docstring."""

    def __init__(
        self,
        tokenizer_dir: str | Path,
        *,
        eos_token_ids: list[int],
        vocab_size: int,
        cache_dir: Path | None = None,
        time_limit_s: float = 10.0,
        max_states: int = 100_000,
        max_cache_bytes: int = 512 << 20,
        num_workers: int = 1,
        whitespace_pattern: str = sources.COMPACT_WHITESPACE,
        max_compile_memory_bytes: int = 4 << 30,
    ):
        self.table = load_token_table(tokenizer_dir, eos_token_ids, vocab_size, cache_dir)
        self.time_limit_s = time_limit_s
        self.whitespace_pattern = whitespace_pattern
        self._memory: ByteLRU[CompiledGrammar] = ByteLRU(max_cache_bytes)
        self._failures: ByteLRU[InvalidRequest] = ByteLRU(1024)  # counted as one "byte" each
        self._disk = DiskCache(Path(cache_dir) / "grammars", 8 * max_cache_bytes) if cache_dir else None
        self._inflight: dict[tuple[str, str], Future] = {}
        self._stats: Counter = Counter(hits=0, misses=0, compiles=0, failures=0, disk_hits=0, compile_seconds=0.0)
        self._lock = threading.Lock()
        # NOTE: outlines-core exposes its byte serialisation only through __reduce__.
        vocabulary_bytes = self.table.vocabulary.__reduce__()[1][0]
        self._all_processes = [
            CompileProcess(vocabulary_bytes, max_states=max_states, memory_limit_bytes=max_compile_memory_bytes)
            for _ in range(num_workers)
        ]
        self._processes: queue.SimpleQueue[CompileProcess] = queue.SimpleQueue()
        for process in self._all_processes:
            self._processes.put(process)
        self._executor = ThreadPoolExecutor(num_workers, thread_name_prefix="radixrt-grammar")

    def submit(self, kind: str, source: Any) -> Future[CompiledGrammar]:
        """A future of the compiled grammar; raises InvalidRequest (param=kind) through the future."""
        key = (kind, source if isinstance(source, str) else json.dumps(source, sort_keys=True))
        with self._lock:
            cached = self._memory.get(key) or self._failures.get(key) or self._inflight.get(key)
            if cached is not None:
                self._stats["hits"] += 1
                return cached if isinstance(cached, Future) else _done(cached)
            self._stats["misses"] += 1
            future: Future[CompiledGrammar] = Future()
            self._inflight[key] = future
        self._executor.submit(self._run, key, future)
        return future

    def validate(self, kind: str, source: Any) -> dict[str, Any]:
        """Dry run (blocks): ok, error, enforced and unsupported JSON-schema keywords, compile_seconds, num_states."""
        report: dict[str, Any] = {"ok": False, "error": None, "enforced": [], "unsupported": [],
                                  "compile_seconds": None, "num_states": None}  # fmt: skip
        try:
            if kind == "json_schema":
                checked = sources.check_json_schema(source)
                report["enforced"], report["unsupported"] = sorted(checked.enforced), list(checked.unsupported)
            grammar = self.submit(kind, source).result()
        except InvalidRequest as exc:
            report["error"] = str(exc)
            return report
        report.update(ok=True, compile_seconds=grammar.compile_seconds, num_states=grammar.num_states)
        return report

    def stats(self) -> dict[str, float]:
        """Counters: hits, misses, compiles, failures, disk_hits, compile_seconds, cached_grammars, cached_bytes."""
        with self._lock:
            return {**self._stats, "cached_grammars": len(self._memory), "cached_bytes": self._memory.used_bytes}

    def close(self) -> None:
        """Stop the compile threads and kill their child processes."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        for process in self._all_processes:
            process.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _run(self, key: tuple[str, str], future: Future) -> None:
        try:
            grammar = self._load_or_compile(*key)
        except InvalidRequest as exc:
            with self._lock:
                self._stats["failures"] += 1
                self._failures.put(key, exc, 1)
                del self._inflight[key]
            future.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - an internal error fails this request only, not the thread
            with self._lock:
                del self._inflight[key]
            future.set_exception(exc)
        else:
            with self._lock:
                self._memory.put(key, grammar, grammar.nbytes)
                del self._inflight[key]
            future.set_result(grammar)

    def _load_or_compile(self, kind: str, source: str) -> CompiledGrammar:
        grammar_source = sources.prepare(kind, source, self.whitespace_pattern)
        disk_key = self._disk_key(kind, source)
        data = self._disk.get(disk_key) if self._disk else None
        if data is not None:
            try:
                grammar = CompiledGrammar.from_bytes(data, self.table)
            except ValueError:
                grammar = None  # a damaged or foreign file: compile again and overwrite it
            if grammar is not None:
                with self._lock:
                    self._stats["disk_hits"] += 1
                return grammar
        grammar = self._compile(kind, grammar_source)
        if self._disk:
            self._disk.put(disk_key, grammar.to_bytes())
        return grammar

    def _compile(self, kind: str, grammar_source: sources.GrammarSource) -> CompiledGrammar:
        process = self._processes.get()
        start = time.perf_counter()
        try:
            regex, binary, num_states = process.compile(grammar_source.request(), self.time_limit_s)
        except CompileTimeout as exc:
            raise InvalidRequest(f"grammar is too complex: {exc}", kind) from None
        except CompileError as exc:
            raise InvalidRequest(_explain(grammar_source.regex, str(exc)), kind) from None
        finally:
            self._processes.put(process)
        seconds = time.perf_counter() - start
        with self._lock:
            self._stats["compiles"] += 1
            self._stats["compile_seconds"] += seconds
        return CompiledGrammar(
            outlines_core.Index.from_binary(binary), self.table, regex, num_states, len(binary), seconds
        )

    def _disk_key(self, kind: str, source: str) -> str:
        parts = (_OUTLINES_VERSION, self.table.hash, self.whitespace_pattern, kind, source)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _done(value: CompiledGrammar | BaseException) -> Future:
    future: Future = Future()
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
    return future


def _explain(regex: str | None, message: str) -> str:
    """A user-facing reason for a failed compile (`regex` None for a JSON schema)."""
    first_line = message.splitlines()[0] if message else "unknown error"
    if first_line.startswith("invalid JSON schema") or "states, more than" in first_line:
        return first_line[:500]
    if "incompatible" in first_line:
        return f"the model's vocabulary cannot produce this grammar: {first_line[:300]}"
    if regex is not None and ("DFA" in first_line or "NFA" in first_line):
        try:
            re.compile(regex)
        except re.error as exc:
            return f"invalid regex: {exc}"
        return f"invalid or unsupported regex ({first_line[:300]}); look-around, backreferences and anchors are unsupported"
    return f"grammar cannot be compiled: {first_line[:300]}"
