"""`StreamExecutor`: runs one program state's expressions, in order, on its own thread.

The program body only submits expressions and runs ahead; it blocks when it reads a variable
(`s["x"]`) or the text. So the branches of a fork, each with its own executor, send their
requests concurrently, and the server batches them over their shared, already cached, prefix.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from radixrt.lang import ir
from radixrt.lang.backends.base import Backend, set_current_program
from radixrt.lang.cache_report import CallLog
from radixrt.lang.ops import Ops
from radixrt.lang.sampling import GenOptions

logger = logging.getLogger(__name__)

_END = object()


class StreamExecutor(Ops):
    """One program state: its text, chat messages, variables and the thread that fills them."""

    def __init__(
        self,
        backend: Backend,
        defaults: GenOptions | None = None,
        stream: bool = False,
        log: CallLog | None = None,
        branch: str = "",
        program_id: str | None = None,
    ):
        self.backend, self.defaults, self.stream = backend, defaults or GenOptions(), stream
        self.program_id = program_id or uuid.uuid4().hex  # a fork's branches share their program's
        self.log = log if log is not None else CallLog()
        self.branch = branch
        self.text_ = ""
        self.messages_: list[dict[str, str]] = []
        self.variables: dict[str, Any] = {}
        self.meta_info: dict[str, Any] = {}
        self.cur_role: str | None = None
        self.role_begin = 0
        self.scope_begin: dict[str, int] = {}
        self.error: BaseException | None = None
        self.finished = False
        self.children: list[StreamExecutor] = []
        self.fork_assigned: set[str] = set()  # names set since this state was forked off
        self.streamed: dict[str, str] = {}  # raw text of each gen so far (stream mode)
        self._pending: Counter[str] = Counter()
        self._failed: set[str] = set()
        self._unfinished = 0
        self._ended = False
        self._cond = threading.Condition()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="radixrt-program", daemon=True)
        self._thread.start()

    # ---- called by the program body ------------------------------------------------------

    def submit(self, value: Any) -> None:
        for item in ir.flatten(value):
            if isinstance(item, (ir.Argument, ir.Variable)):
                raise TypeError(f"{item} is a trace placeholder; it cannot run")
            with self._cond:
                if self._ended:
                    self._set_after_end(item)
                    continue
                self._pending.update(ir.assigned_names(item))
                self._unfinished += 1
            self._queue.put(item)

    def sync(self) -> None:
        """Wait until everything submitted has run; raise the error that stopped it, if any."""
        with self._cond:
            self._cond.wait_for(lambda: self._unfinished == 0 or self.finished)
            if self.error is not None:
                raise self.error

    def end(self) -> None:
        """No more expressions: the thread exits after the queued ones (children too)."""
        with self._cond:
            if self._ended:
                return
            self._ended = True
        self._queue.put(_END)
        for child in self.children:
            child.end()

    def wait_finished(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.finished)
        for child in self.children:
            child.wait_finished()

    def quiesce(self) -> None:
        """Wait until this state and its forks have run everything submitted; never raises."""
        with self._cond:
            self._cond.wait_for(lambda: self._unfinished == 0 or self.finished)
        for child in self.children:
            child.quiesce()

    def fail(self, error: BaseException) -> None:
        """Record an error raised outside the thread (the program body itself)."""
        with self._cond:
            if self.error is None:
                self.error = error
            self._cond.notify_all()

    def errors(self) -> list[BaseException]:
        """This state's error, then its forks' (depth first)."""
        own = [] if self.error is None else [self.error]
        return own + [e for child in self.children for e in child.errors()]

    def get_var(self, name: str) -> Any:
        with self._cond:
            self._cond.wait_for(lambda: self._pending[name] == 0 or self.finished)
            if name in self._failed and self.error is not None:
                raise self.error
            if name not in self.variables:
                raise KeyError(f"program variable {name!r} was never set")
            return self.variables[name]

    def get_meta_info(self, name: str) -> Any:
        self.get_var(name)
        return self.meta_info.get(name)

    def set_var(self, name: str, value: Any) -> None:
        self.submit(ir.SetVar(name, value))

    def _set_after_end(self, item: ir.Expr) -> None:
        """An ended program takes only `s[name] = value` (SGLang programs post-process results
        that way), applied after the queued expressions. Called under the condition."""
        if not isinstance(item, ir.SetVar):
            raise RuntimeError(
                f"the program has ended; cannot add {item.kind} to its state (s[name] = value still sets a variable)"
            )
        self._cond.wait_for(lambda: self.finished)
        self._failed.discard(item.name)
        self.assign(item.name, item.value, item.meta, has_meta=item.meta is not None)

    def text(self) -> str:
        self.sync()
        return self.text_

    def messages(self) -> list[dict[str, str]]:
        self.sync()
        return [dict(m) for m in self.messages_]

    def fork(self, size: int) -> list[StreamExecutor]:
        """Commit the text so far once (prefill-only), then start `size` copies of this state."""
        self.submit(ir.CommitPrefix())
        self.sync()
        children = [self._copy(f"{self.branch}.{i}" if self.branch else str(i)) for i in range(size)]
        self.children.extend(children)
        return children

    def next_chunk(self, var: str | None, offset: int) -> tuple[str, bool]:
        """Block until the text (or variable `var`) grows past `offset` or is final.

        Returns (new text, final). Used by the streaming iterators.
        """
        with self._cond:
            while True:
                current, final = self.text_, self.finished or self.error is not None
                if var is not None:
                    done = self._pending[var] == 0 and (var in self.streamed or var in self.variables)
                    # a variable that was not generated here (a gathered list, s[x] = v) comes whole
                    current = self.streamed.get(var, str(self.variables[var]) if done else "")
                    final = final or done
                if len(current) > offset or final:
                    return current[offset:], final
                self._cond.wait()

    # ---- the executor thread -------------------------------------------------------------

    def _run(self) -> None:
        set_current_program(self.program_id)
        while (item := self._queue.get()) is not _END:
            try:
                if self.error is None:
                    self.execute(item)
            except BaseException as e:  # noqa: BLE001 - any failure stops this state, not the process
                logger.debug("program step %s failed: %r", item.kind, e)
                with self._cond:
                    self.error = e
            finally:
                with self._cond:
                    names = ir.assigned_names(item)
                    self._pending.subtract(names)
                    if self.error is not None:
                        self._failed.update(names)
                    self._unfinished -= 1
                    self._cond.notify_all()
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    def _copy(self, branch: str) -> StreamExecutor:
        child = StreamExecutor(self.backend, self.defaults, self.stream, self.log, branch, self.program_id)
        with self._cond:
            child.text_, child.messages_ = self.text_, [dict(m) for m in self.messages_]
            child.variables, child.meta_info = dict(self.variables), dict(self.meta_info)
            child.cur_role, child.role_begin = self.cur_role, self.role_begin
            child.scope_begin = dict(self.scope_begin)
        return child

    # ---- state updates used by the ops (under the condition) -------------------------------

    def append_text(self, text: str, var: str | None = None) -> None:
        with self._cond:
            self.text_ += text
            if var is not None:
                self.streamed[var] = self.streamed.get(var, "") + text
            self._cond.notify_all()

    def set_generated(self, prompt: str, text: str, var: str | None) -> None:
        """The final text of a request on `prompt` (equal to the streamed pieces, when streamed)."""
        with self._cond:
            self.text_ = prompt + text
            if var is not None:
                self.streamed[var] = text
            self._cond.notify_all()

    def assign(self, name: str | None, value: Any, meta: Any = None, has_meta: bool = False) -> None:
        with self._cond:
            self.variables[name] = value
            if has_meta:
                self.meta_info[name] = meta
            if name is not None:
                self.fork_assigned.add(name)
            self._cond.notify_all()

    def fan_out(self, fn, count: int) -> list[Any]:
        """Run `fn(i)` for i in range(count) concurrently (n > 1 gens)."""
        with ThreadPoolExecutor(max_workers=count) as pool:
            return list(pool.map(fn, range(count)))
