"""Faithful or loud: check a JSON schema against what the regex converter really enforces.

outlines-core's converter looks at one "dispatch" keyword per schema object (properties, allOf, anyOf,
oneOf, prefixItems, enum, const, $ref, type, in that order) and silently ignores the rest, e.g.
`minimum`, `uniqueItems`, a second `allOf` member, or `pattern` next to `maxLength`. We walk the
schema, rewrite it into a form the converter handles exactly (refs inlined, type lists as anyOf,
integer/number bounds as placeholders for our own range regexes) and collect every keyword we could
not enforce. A caller rejects the schema when that list is not empty.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from radixrt.constrained import schema_types
from radixrt.constrained.disjoint import disjoint

# Keywords that never constrain a value.
ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "$schema", "$id", "deprecated", "readOnly",
     "writeOnly", "$defs", "definitions", "discriminator", "$anchor", "contentEncoding", "contentMediaType"}
)  # fmt: skip


# outlines-core writes `{}` as a bare `a|b|c` alternation that breaks the regex around it; this one is grouped.
ANY_VALUE = {"anyOf": [{"type": t} for t in ("null", "boolean", "integer", "number", "string", "array", "object")]}


class SchemaTooLarge(Exception):
    """The schema expands (after inlining $ref) to more than the allowed number of schema objects."""


@dataclass
class CheckedSchema:
    """The rewritten schema, what it enforces, what it cannot, and the placeholders to substitute."""

    schema: dict[str, Any]
    enforced: set[str] = field(default_factory=set)
    unsupported: list[str] = field(default_factory=list)
    # placeholder string -> the regex to put where the converter wrote that string (with its quotes)
    placeholders: dict[str, str] = field(default_factory=dict)


class SchemaChecker:
    """Walks one schema; `check(root)` returns a CheckedSchema."""

    def __init__(self, root: Any, max_nodes: int):
        self.root = root
        self.max_nodes = max_nodes
        self.nodes = 0
        self.refs: list[str] = []
        self.nonce = secrets.token_hex(6)
        self.result = CheckedSchema({})
        # NOTE: kinds of each placeholder ("integer" or "number"), for oneOf disjointness.
        self.placeholder_kinds: dict[str, str] = {}

    def check(self) -> CheckedSchema:
        self.result.schema = self.visit(self.root, "")
        return self.result

    def unsupported(self, keyword: str, path: str, reason: str = "") -> None:
        where = f"{keyword} at {path or '/'}"
        self.result.unsupported.append(f"{where} ({reason})" if reason else where)

    def enforce(self, *keywords: str) -> None:
        self.result.enforced.update(keywords)

    def placeholder(self, pattern: str, kind: str) -> dict[str, Any]:
        token = f"radixrt{self.nonce}n{len(self.result.placeholders)}"
        self.result.placeholders[token] = pattern
        self.placeholder_kinds[token] = kind
        return {"const": token}

    def visit(self, node: Any, path: str) -> dict[str, Any]:
        """The rewritten form of `node`; unsupported keywords are recorded, never raised."""
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise SchemaTooLarge(f"the schema expands to more than {self.max_nodes} schema objects")
        if node is True:
            return dict(ANY_VALUE)
        if not isinstance(node, dict):
            self.unsupported(json.dumps(node), path, "only object schemas and `true` are supported")
            return {}
        keys = set(node) - ANNOTATIONS
        handler = next((h for key, h in _DISPATCH if key in keys), None)
        # An empty schema (annotations only) allows any JSON value.
        out, consumed = handler(self, node, path) if handler else (dict(ANY_VALUE), set())
        for key in sorted(keys - consumed):
            self.unsupported(key, path, "not enforced" if handler else "no type or structure keyword beside it")
        return out

    def visit_list(self, node: dict[str, Any], key: str, path: str) -> list[dict[str, Any]] | None:
        branches = node[key]
        if not isinstance(branches, list) or not branches:
            self.unsupported(key, path, "must be a non-empty array")
            return None
        return [self.visit(b, f"{path}/{key}/{i}") for i, b in enumerate(branches)]

    def resolve(self, ref: Any, path: str) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#") or "~" in ref or "%" in ref:
            self.unsupported("$ref", path, f"only plain local references are supported, got {ref!r}")
            return None
        target = self.root
        for part in filter(None, ref[1:].split("/")):
            if not isinstance(target, dict) or part not in target:
                self.unsupported("$ref", path, f"{ref!r} does not resolve")
                return None
            target = target[part]
        return target


def _properties(c: SchemaChecker, node: dict, path: str):
    return schema_types.properties(c, node, path)


def _all_of(c: SchemaChecker, node: dict, path: str):
    members = node["allOf"]
    if isinstance(members, list) and len(members) == 1:
        c.enforce("allOf")
        return c.visit(members[0], f"{path}/allOf/0"), {"allOf"}
    c.unsupported("allOf", path, "only a single-member allOf is supported")
    return {}, {"allOf"}


def _any_of(c: SchemaChecker, node: dict, path: str):
    branches = c.visit_list(node, "anyOf", path)
    if branches is None:
        return {}, {"anyOf"}
    c.enforce("anyOf")
    return {"anyOf": branches}, {"anyOf"}


def _one_of(c: SchemaChecker, node: dict, path: str):
    branches = c.visit_list(node, "oneOf", path)
    if branches is None:
        return {}, {"oneOf"}
    if not disjoint(branches, c.placeholder_kinds):
        c.unsupported("oneOf", path, "branches may overlap, so exactly-one cannot be guaranteed")
        return {}, {"oneOf"}
    c.enforce("oneOf")
    return {"anyOf": branches}, {"oneOf"}


def _prefix_items(c: SchemaChecker, node: dict, path: str):
    return schema_types.prefix_items(c, node, path)


def _literal(keyword: str):
    def handler(c: SchemaChecker, node: dict, path: str):
        return schema_types.literal(c, node, path, keyword)

    return handler


def _ref(c: SchemaChecker, node: dict, path: str):
    ref = node["$ref"]
    if ref in c.refs:
        c.unsupported("$ref", path, f"recursive reference {ref!r}")
        return {}, {"$ref"}
    target = c.resolve(ref, path)
    if target is None:
        return {}, {"$ref"}
    c.refs.append(ref)
    try:
        out = c.visit(target, str(ref)[1:])
    finally:
        c.refs.pop()
    c.enforce("$ref")
    return out, {"$ref"}


def _type(c: SchemaChecker, node: dict, path: str):
    return schema_types.typed(c, node, path)


_DISPATCH = (
    ("properties", _properties),
    ("allOf", _all_of),
    ("anyOf", _any_of),
    ("oneOf", _one_of),
    ("prefixItems", _prefix_items),
    ("enum", _literal("enum")),
    ("const", _literal("const")),
    ("$ref", _ref),
    ("type", _type),
)
