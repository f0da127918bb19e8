"""`ProgramState` (the `s` a program receives) and `ProgramStateGroup` (what `s.fork(n)` returns)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from radixrt.lang import ir
from radixrt.lang.cache_report import CacheReport
from radixrt.lang.interpreter import StreamExecutor


class StateBase:
    """What running and tracing states share: `+=`, roles and variable scopes."""

    def _submit(self, expr: Any) -> None:
        raise NotImplementedError

    def __iadd__(self, expr: Any):
        self._submit(expr)
        return self

    def system(self, expr: Any = None):
        return self._role("system", expr)

    def user(self, expr: Any = None):
        return self._role("user", expr)

    def assistant(self, expr: Any = None):
        return self._role("assistant", expr)

    def _role(self, name: str, expr: Any):
        """With `expr`: add the whole message. Without: a `with s.user():` scope."""
        if expr is not None:
            self._submit(ir.role(name, expr))
            return None
        return self._scope(ir.RoleBegin(name), ir.RoleEnd(name))

    def var_scope(self, name: str):
        """`with s.var_scope("x"):` stores the text added inside the block as variable x."""
        return self._scope(ir.VarScopeBegin(name), ir.VarScopeEnd(name))

    @contextmanager
    def _scope(self, begin: ir.Expr, end: ir.Expr):
        self._submit(begin)
        yield
        self._submit(end)


class ProgramState(StateBase):
    """A running program's state. Reading (`s[name]`, `text()`) waits for the requests it needs."""

    def __init__(self, stream_executor: StreamExecutor):
        self.stream_executor = stream_executor
        self.ret_value: Any = None

    def _submit(self, expr: Any) -> None:
        self.stream_executor.submit(expr)

    def __getitem__(self, name: str) -> Any:
        return self.stream_executor.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        self.sync()
        return name in self.stream_executor.variables

    def get_var(self, name: str) -> Any:
        return self.stream_executor.get_var(name)

    def set_var(self, name: str, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def get_meta_info(self, name: str) -> Any:
        """The server's meta_info of gen/select `name` (prompt/cached/completion tokens, ...)."""
        return self.stream_executor.get_meta_info(name)

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> ProgramStateGroup:
        """`size` copies of this state that continue independently and concurrently."""
        base_len = len(self.stream_executor.text())
        states = [ProgramState(ex) for ex in self.stream_executor.fork(size)]
        return ProgramStateGroup(states, self, base_len)

    def copy(self) -> ProgramState:
        return self.fork(1)[0]

    def text(self) -> str:
        return self.stream_executor.text()

    def messages(self) -> list[dict[str, str]]:
        return self.stream_executor.messages()

    def sync(self) -> None:
        self.stream_executor.sync()

    def error(self) -> BaseException | None:
        errors = self.stream_executor.errors()
        return errors[0] if errors else None

    def cache_report(self) -> CacheReport:
        """Prompt and cached tokens of every request this program sent (forks included)."""
        self.stream_executor.quiesce()
        return CacheReport(self.stream_executor.log.records())

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Pieces of the program text (or of one variable) as they are generated."""
        ex = self.stream_executor
        if not ex.stream:
            yield self.text() if var_name is None else str(self[var_name])
            return
        offset = 0
        while True:
            piece, final = ex.next_chunk(var_name, offset)
            offset += len(piece)
            if piece:
                yield piece
            if final:
                break
        self._raise_error()

    async def text_async_iter(self, var_name: str | None = None, return_meta_data: bool = False):
        """`text_iter` for asyncio. With `return_meta_data`, yields (piece, meta_info) pairs."""
        ex = self.stream_executor
        if not ex.stream:
            for piece in self.text_iter(var_name):
                yield (piece, ex.meta_info.get(var_name)) if return_meta_data else piece
            return
        offset = 0
        while True:
            piece, final = await asyncio.to_thread(ex.next_chunk, var_name, offset)
            offset += len(piece)
            if piece:
                yield (piece, ex.meta_info.get(var_name)) if return_meta_data else piece
            if final:
                break
        self._raise_error()

    def _raise_error(self) -> None:
        if self.stream_executor.error is not None:
            raise self.stream_executor.error

    def __repr__(self) -> str:
        return f"ProgramState({self.stream_executor.text_!r})"  # no wait: repr must not block


class ProgramStateGroup:
    """The branches of a fork: index, iterate, `+=` to all, then `join()`."""

    def __init__(self, states: list[ProgramState], src_state: ProgramState, base_len: int):
        self.states, self.src_state, self.base_len = states, src_state, base_len

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: ProgramState) -> None:
        if value is not self.states[i]:  # `forks[i] += x` stores the same state back
            raise TypeError("fork branches cannot be replaced")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> ProgramStateGroup:
        """Add `other` to every branch; a callable gets the branch index: `forks += lambda i: ...`."""
        for i, state in enumerate(self.states):
            state += other(i) if isinstance(other, Callable) else other
        return self

    def join(self, mode: str = "gather_variable") -> None:
        """Wait for the branches, then bring their results into the parent state.

        gather_variable: each variable a branch set becomes a list over the branches.
        concate_and_append: each branch's new text is appended to the parent, in order.
        """
        executors = [s.stream_executor for s in self.states]
        for ex in executors:
            ex.sync()
        if mode == "gather_variable":
            names = sorted({n for ex in executors for n in ex.fork_assigned})
            for name in names:
                values = [ex.variables.get(name) for ex in executors]
                metas = [ex.meta_info.get(name) for ex in executors]
                self.src_state += ir.SetVar(name, values, metas)
        elif mode == "concate_and_append":
            self.src_state += "".join(ex.text_[self.base_len :] for ex in executors)
        else:
            raise ValueError(f"unknown join mode {mode!r}; use 'gather_variable' or 'concate_and_append'")
