"""Expressions of a radixrt program: what `s += ...` accepts and what a trace records.

An expression is plain data. The interpreter executes it against a backend; the tracer only
records it. `"Q: " + gen("a")` and `gen("a") + "\\n"` build an `ExprList`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from radixrt.lang.sampling import (  # noqa: F401 - the regexes stay importable from ir, as in SGLang
    REGEX_BOOL,
    REGEX_FLOAT,
    REGEX_INT,
    REGEX_STR,
    GenOptions,
)


class Expr:
    """Base class: supports `+` with strings and other expressions."""

    def __add__(self, other: Any) -> ExprList:
        return ExprList([self, to_expr(other)])

    def __radd__(self, other: Any) -> ExprList:
        return ExprList([to_expr(other), self])

    @property
    def kind(self) -> str:
        """snake_case class name: "text", "gen", "role_begin", ..."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()


@dataclass(eq=False)
class Text(Expr):
    value: str


@dataclass(eq=False)
class Gen(Expr):
    name: str | None
    options: GenOptions = field(default_factory=GenOptions)


@dataclass(eq=False)
class Select(Expr):
    name: str | None
    choices: list[str]
    temperature: float = 0.0
    choices_method: Any = None  # a radixrt.lang.choices.ChoicesMethod; None means the default


@dataclass(eq=False)
class RoleBegin(Expr):
    role: str


@dataclass(eq=False)
class RoleEnd(Expr):
    role: str


@dataclass(eq=False)
class VarScopeBegin(Expr):
    name: str


@dataclass(eq=False)
class VarScopeEnd(Expr):
    name: str


@dataclass(eq=False)
class SetVar(Expr):
    """`s[name] = value`, kept in program order."""

    name: str
    value: Any
    meta: Any = None


@dataclass(eq=False)
class CommitPrefix(Expr):
    """Send the text so far as a prefill-only request, so the server caches it (fork)."""


@dataclass(eq=False)
class Argument(Expr):
    """A program argument left unbound in a trace."""

    name: str

    def __str__(self) -> str:
        return "{" + self.name + "}"


@dataclass(eq=False)
class Variable(Expr):
    """`s[name]` read while tracing: the value is unknown until the program runs."""

    name: str

    def __str__(self) -> str:
        return "{" + self.name + "}"


class ExprList(Expr):
    """A flat sequence of expressions."""

    def __init__(self, items: list[Expr]):
        self.items: list[Expr] = []
        for item in items:
            self.items.extend(item.items if isinstance(item, ExprList) else [item])

    def __repr__(self) -> str:
        return f"ExprList({self.items!r})"


def to_expr(value: Any) -> Expr:
    """Turn what a user may write after `s +=` into an expression."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return Text(value)
    raise TypeError(f"cannot add {type(value).__name__} to a program; use a str or a radixrt expression")


def flatten(value: Any) -> list[Expr]:
    expr = to_expr(value)
    return list(expr.items) if isinstance(expr, ExprList) else [expr]


def role(name: str, expr: Any = None) -> ExprList:
    """`RoleBegin(name), expr, RoleEnd(name)`; an empty message when `expr` is None."""
    body = [] if expr is None else [to_expr(expr)]
    return ExprList([RoleBegin(name), *body, RoleEnd(name)])


def assigned_names(expr: Expr) -> list[str]:
    """Variable names this expression sets when executed."""
    if isinstance(expr, (Gen, Select)) and expr.name is not None:
        return [expr.name]
    if isinstance(expr, (VarScopeEnd, SetVar)):
        return [expr.name]
    return []
