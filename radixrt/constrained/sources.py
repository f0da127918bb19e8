"""Grammar sources (regex, json_schema, choices, dtype) -> one regex outlines-core compiles.

All problems a user can fix are raised as InvalidRequest naming the request field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from radixrt.constrained.compile_worker import build_regex
from radixrt.constrained.schema_check import (
    CheckedSchema,
    SchemaChecker,
    SchemaTooLarge,
)
from radixrt.errors import InvalidRequest

KINDS = ("regex", "json_schema", "choices", "dtype")
# Minified JSON: no optional whitespace, so a grammar cannot pad output until max_tokens and the
# text between values is forced (jump-forward writes `{"name":"` in one step).
COMPACT_WHITESPACE = ""
# One optional space where JSON allows whitespace (outlines-core's own default).
SPACED_WHITESPACE = r"[ ]?"

REGEX_INT = r"(0|-?[1-9][0-9]*)"
REGEX_FLOAT = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r'"([^"\\\x00-\x1F]|\\["\\/bfnrt])*"'
DTYPE_REGEXES = {"int": REGEX_INT, "float": REGEX_FLOAT, "bool": REGEX_BOOL, "str": REGEX_STR}

# outlines-core uses Rust's regex syntax; these are its metacharacters.
_RUST_META = set("\\.+*?()|[]{}^$#&-~")
_VERBOSE_FLAG = re.compile(r"\(\?[a-zA-Z-]*x")


@dataclass(frozen=True)
class GrammarSource:
    """What the compile process turns into a regex: a regex as is, or a checked schema to convert.

    A schema is converted in the compile process because the converter's output can grow
    exponentially with nesting; there the time and memory limits apply to it too.
    `enforced` lists the JSON-schema keywords the grammar enforces (empty for other kinds).
    """

    regex: str | None = None
    schema_json: str | None = None
    whitespace_pattern: str = COMPACT_WHITESPACE
    placeholders: dict[str, str] = field(default_factory=dict)
    enforced: tuple[str, ...] = ()

    def request(self) -> dict[str, Any]:
        """The compile request (plain JSON data) understood by compile_worker.build_regex."""
        if self.regex is not None:
            return {"regex": self.regex}
        return {"schema": self.schema_json, "whitespace": self.whitespace_pattern, "placeholders": self.placeholders}


def prepare(
    kind: str, source: Any, whitespace_pattern: str = COMPACT_WHITESPACE, max_schema_nodes: int = 10_000
) -> GrammarSource:
    """Check a request's grammar and describe what to compile; raises InvalidRequest with param=kind."""
    if kind == "regex":
        return GrammarSource(regex=check_regex(source))
    if kind == "json_schema":
        checked = check_json_schema(source, max_schema_nodes)
        if checked.unsupported:
            raise InvalidRequest(
                "JSON schema uses keywords radixrt cannot enforce: " + "; ".join(checked.unsupported), kind
            )
        return GrammarSource(
            schema_json=json.dumps(checked.schema),
            whitespace_pattern=whitespace_pattern,
            placeholders=checked.placeholders,
            enforced=tuple(sorted(checked.enforced)),
        )
    if kind == "choices":
        return GrammarSource(regex=choices_regex(source))
    if kind == "dtype":
        if source not in DTYPE_REGEXES:
            raise InvalidRequest(f"dtype must be one of {sorted(DTYPE_REGEXES)}, got {source!r}", kind)
        return GrammarSource(regex=DTYPE_REGEXES[source])
    raise InvalidRequest(f"unknown grammar kind {kind!r}; expected one of {KINDS}", kind)


def check_json_schema(source: str | dict | bool, max_schema_nodes: int = 10_000) -> CheckedSchema:
    """Parse and check a schema; unsupported keywords are listed in the result, not raised."""
    try:
        schema = json.loads(source) if isinstance(source, str) else source
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"json_schema is not valid JSON: {exc}", "json_schema") from None
    if not isinstance(schema, dict | bool):
        raise InvalidRequest("json_schema must be a JSON object", "json_schema")
    if schema is False:
        raise InvalidRequest("json_schema `false` allows no value", "json_schema")
    try:
        return SchemaChecker(schema, max_schema_nodes).check()
    except (SchemaTooLarge, RecursionError) as exc:
        raise InvalidRequest(f"json_schema is too large: {exc or 'nested too deeply'}", "json_schema") from None


def to_regex(kind: str, source: Any, whitespace_pattern: str = COMPACT_WHITESPACE) -> str:
    """The regex of a grammar, built in this process (no time or memory limit: for tests and tools)."""
    try:
        return build_regex(prepare(kind, source, whitespace_pattern).request())
    except ValueError as exc:
        raise InvalidRequest(f"invalid JSON schema: {str(exc).splitlines()[0]}", kind) from None


def choices_regex(source: str | list[str]) -> str:
    """An alternation of the literal choices (a JSON-encoded list, as in SamplingParams.grammar_key)."""
    try:
        choices = json.loads(source) if isinstance(source, str) else source
    except json.JSONDecodeError:
        choices = None
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise InvalidRequest("choices must be a non-empty list of non-empty strings", "choices")
    return "(" + "|".join(rust_escape(c) for c in dict.fromkeys(choices)) + ")"


def rust_escape(text: str) -> str:
    """`text` as a literal in Rust regex syntax."""
    return "".join("\\" + ch if ch in _RUST_META else ch for ch in text)


def check_regex(pattern: Any) -> str:
    """`pattern` with outer anchors removed; InvalidRequest for features outlines-core cannot compile."""
    if not isinstance(pattern, str):
        raise InvalidRequest("regex must be a string", "regex")
    pattern = pattern.removeprefix("^")
    if pattern.endswith("$") and _is_unescaped(pattern, len(pattern) - 1):
        pattern = pattern[:-1]
    problem = _regex_problem(pattern)
    if problem:
        raise InvalidRequest(f"unsupported regex: {problem}", "regex")
    return pattern


def _is_unescaped(pattern: str, index: int) -> bool:
    backslashes = len(pattern[:index]) - len(pattern[:index].rstrip("\\"))
    return backslashes % 2 == 0


def _regex_problem(pattern: str) -> str | None:
    """A scan for what outlines-core cannot compile, and for anything that would escape the group
    `(?:R)` the compiler wraps R in (unbalanced parentheses, verbose-mode comments)."""
    in_class, depth, i = False, 0, 0
    while i < len(pattern):
        ch, rest = pattern[i], pattern[i:]
        if ch == "\\":
            escaped = pattern[i + 1 : i + 2]
            if not escaped:
                return "the regex ends with a lone backslash"
            if not in_class and (escaped in tuple("123456789") or rest.startswith("\\k<")):
                return "backreferences are not supported"
            if not in_class and escaped in ("b", "B", "A", "z", "Z"):
                return f"assertion \\{escaped} is not supported"
            i += 2
            continue
        if in_class:
            in_class = ch != "]" or pattern[i - 1] == "["
        elif ch == "[":
            in_class = True
        elif rest.startswith(("(?=", "(?!", "(?<=", "(?<!")):
            return "look-around is not supported"
        elif _VERBOSE_FLAG.match(rest):
            return "the verbose flag (?x) is not supported"
        elif ch in "^$":
            return "anchors are only supported at the very start and end"
        elif ch in "()":
            depth += 1 if ch == "(" else -1
            if depth < 0:
                return "unbalanced parentheses"
        i += 1
    return "unbalanced parentheses" if depth else "an unterminated character class" if in_class else None
