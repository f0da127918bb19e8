"""`f.trace()`: run a program body against a recording state and get its IR graph, no model.

Generated values are unknown while tracing: `s["x"]` is a `Variable` placeholder and unbound
arguments are `Argument` placeholders. A program that computes on such a value in Python (e.g.
`int(s["x"])`) cannot be traced; running it is unaffected.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from radixrt.lang import ir
from radixrt.lang.chat_template import ChatTemplate
from radixrt.lang.state import ProgramStateGroup, StateBase


@dataclass(eq=False)
class Fork(ir.Expr):
    branches: list[list[ir.Expr]] = field(default_factory=list)


@dataclass(eq=False)
class Join(ir.Expr):
    mode: str = "gather_variable"


_CONSTANT = (ir.Text, ir.RoleBegin, ir.RoleEnd, ir.VarScopeBegin, ir.VarScopeEnd, ir.SetVar)


class _PrefixDone(Exception):
    """Raised inside a prefix-only trace at the first node whose text is not known."""


@dataclass
class _Limits:
    max_nodes: int
    prefix_only: bool
    count: int = 0


class TracerState(StateBase):
    """Records what a program adds instead of running it."""

    def __init__(self, nodes: list[ir.Expr], limits: _Limits):
        self.nodes, self._limits = nodes, limits

    def _submit(self, expr: Any) -> None:
        for node in ir.flatten(expr):
            self._record(node)

    def _record(self, node: ir.Expr) -> None:
        limits = self._limits
        if limits.prefix_only and not isinstance(node, _CONSTANT):
            raise _PrefixDone
        limits.count += 1
        if limits.count > limits.max_nodes:
            raise RuntimeError(f"trace exceeded {limits.max_nodes} nodes: does the program loop on a generated value?")
        self.nodes.append(node)

    def __getitem__(self, name: str) -> ir.Variable:
        return ir.Variable(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self._record(ir.SetVar(name, value))

    get_var = __getitem__
    set_var = __setitem__

    def get_meta_info(self, name: str) -> None:
        return None

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> TracerGroup:
        node = Fork([[] for _ in range(size)])
        self._record(node)
        return TracerGroup([TracerState(branch, self._limits) for branch in node.branches], self, 0)

    def copy(self) -> TracerState:
        return self.fork(1)[0]

    def sync(self) -> None:
        pass

    def text(self) -> str:
        return "".join(str(n.value) if isinstance(n, ir.Text) else f"{{{n.kind}}}" for n in self.nodes)

    def messages(self) -> list[dict[str, str]]:
        return []


class TracerGroup(ProgramStateGroup):
    def join(self, mode: str = "gather_variable") -> None:
        self.src_state._record(Join(mode))


@dataclass
class TracedProgram:
    """The IR graph of one program: a node list; a Fork node holds one node list per branch."""

    nodes: list[ir.Expr]

    def walk(self) -> Iterator[ir.Expr]:
        """Every node, depth first (a fork's branches right after the fork node)."""
        stack = [iter(self.nodes)]
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                continue
            yield node
            if isinstance(node, Fork):
                stack.extend(iter(b) for b in reversed(node.branches))

    def kinds(self) -> list[str]:
        return [n.kind for n in self.walk()]

    def constant_prefix(self, template: Callable[[], ChatTemplate]) -> str:
        """The text every run of this program starts with, up to the first unknown value.

        Renders roles exactly like the interpreter; `template` is called only if roles occur.
        """
        out: list[str] = []
        had_message = False
        for node in self.nodes:
            if isinstance(node, ir.Text):
                out.append(node.value)
            elif isinstance(node, ir.RoleBegin):
                tpl = template()
                if not had_message and node.role != "system" and tpl.default_system is not None:
                    out.append(tpl.prefix("system") + tpl.default_system + tpl.suffix("system"))
                out.append(tpl.prefix(node.role))
            elif isinstance(node, ir.RoleEnd):
                out.append(template().suffix(node.role))
                had_message = True
            elif not isinstance(node, (ir.VarScopeBegin, ir.VarScopeEnd, ir.SetVar)):
                break
        return "".join(out)

    def __str__(self) -> str:
        return "\n".join(_format(self.nodes, 0))


def _format(nodes: list[ir.Expr], depth: int) -> list[str]:
    lines = []
    for node in nodes:
        if isinstance(node, ir.RoleEnd):
            depth -= 1
        lines.append("  " * depth + _describe(node))
        if isinstance(node, ir.RoleBegin):
            depth += 1
        if isinstance(node, Fork):
            for i, branch in enumerate(node.branches):
                lines.append("  " * (depth + 1) + f"branch {i}:")
                lines.extend(_format(branch, depth + 2))
    return lines


def _describe(node: ir.Expr) -> str:
    if isinstance(node, ir.Text):
        value = node.value if len(node.value) <= 40 else node.value[:37] + "..."
        return f"text {value!r}"
    if isinstance(node, ir.Gen):
        opts = {k: v for k, v in vars(node.options).items() if v is not None}
        return f"gen {node.name} " + " ".join(f"{k}={v!r}" for k, v in opts.items())
    if isinstance(node, ir.Select):
        return f"select {node.name} choices={node.choices!r}"
    if isinstance(node, (ir.RoleBegin, ir.RoleEnd)):
        return f"{node.kind} {node.role}"
    if isinstance(node, Fork):
        return f"fork {len(node.branches)}"
    if isinstance(node, Join):
        return f"join {node.mode}"
    if isinstance(node, (ir.Argument, ir.Variable, ir.VarScopeBegin, ir.VarScopeEnd, ir.SetVar)):
        return f"{node.kind} {node.name}"
    return node.kind


def trace_program(
    func: Callable, args: tuple, kwargs: dict[str, Any], max_nodes: int = 100_000, prefix_only: bool = False
) -> TracedProgram:
    """Run `func(state, *args, **kwargs)` against a TracerState; unbound parameters become
    `Argument` placeholders. `prefix_only` stops at the first node whose text is unknown."""
    state = TracerState([], _Limits(max_nodes, prefix_only))
    bound = inspect.signature(func).bind_partial(state, *args, **kwargs)
    for name, param in inspect.signature(func).parameters.items():
        plain = param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
        if plain and name not in bound.arguments and param.default is param.empty:
            bound.arguments[name] = ir.Argument(name)
    try:
        func(*bound.args, **bound.kwargs)
    except _PrefixDone:
        pass
    return TracedProgram(state.nodes)
