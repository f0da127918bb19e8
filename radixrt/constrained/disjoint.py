"""When is a rewritten `oneOf` safe to treat as `anyOf`? When no value can match two branches.

We recognise three common shapes: branches of different JSON types, branches of distinct literal
values, and objects told apart by a required discriminator property with distinct literal values.
Anything else is reported as unsupported.
"""

from __future__ import annotations

import json
from itertools import combinations
from typing import Any

_ALL_KINDS = frozenset({"null", "boolean", "integer", "number", "string", "array", "object"})


def disjoint(branches: list[dict[str, Any]], placeholder_kinds: dict[str, str]) -> bool:
    """True when no JSON value can match two of the (rewritten) branches."""
    kinds = [_kinds(b, placeholder_kinds) for b in branches]
    if _pairwise_disjoint(kinds):
        return True
    literals = [_literals(b, placeholder_kinds) for b in branches]
    if all(lit is not None for lit in literals) and _pairwise_disjoint(literals):
        return True
    return _discriminated(branches, placeholder_kinds)


def _pairwise_disjoint(sets: list) -> bool:
    return all(not (a & b) for a, b in combinations(sets, 2))


def _kinds(node: dict[str, Any], placeholder_kinds: dict[str, str]) -> frozenset[str]:
    """The JSON types a rewritten schema can produce; "number" covers the integer-valued numbers too."""
    if "properties" in node:
        return frozenset({"object"})
    if "prefixItems" in node:
        return frozenset({"array"})
    if "anyOf" in node:
        return frozenset().union(*(_kinds(b, placeholder_kinds) for b in node["anyOf"]))
    if "const" in node and node["const"] in placeholder_kinds:
        return _type_kinds(placeholder_kinds[node["const"]])
    if "enum" in node or "const" in node:
        values = node["enum"] if "enum" in node else [node["const"]]
        return frozenset().union(*(_value_kinds(v) for v in values))
    if "type" in node:
        return _type_kinds(node["type"])
    return _ALL_KINDS


def _type_kinds(name: str) -> frozenset[str]:
    return frozenset({"integer", "number"}) if name == "number" else frozenset({name})


def _value_kinds(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset({"null"})
    if isinstance(value, bool):
        return frozenset({"boolean"})
    if isinstance(value, int | float):
        return frozenset({"integer" if float(value).is_integer() else "number"})
    return frozenset({"string" if isinstance(value, str) else "array" if isinstance(value, list) else "object"})


def _literals(node: dict[str, Any], placeholder_kinds: dict[str, str]) -> frozenset[str] | None:
    """Canonical JSON of the values a literal-only schema allows, or None for other schemas."""
    if "const" in node and node["const"] not in placeholder_kinds:
        return frozenset({_canonical(node["const"])})
    if "enum" in node:
        return frozenset(_canonical(v) for v in node["enum"])
    return None


def _canonical(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema compares 1 and 1.0 as equal
    return json.dumps(value, sort_keys=True)


def _discriminated(branches: list[dict[str, Any]], placeholder_kinds: dict[str, str]) -> bool:
    if not all("properties" in b for b in branches):
        return False
    shared = set.intersection(*(set(b.get("required", [])) for b in branches))
    for name in sorted(shared):
        literals = [_literals(b["properties"][name], placeholder_kinds) for b in branches]
        if all(lit is not None for lit in literals) and _pairwise_disjoint(literals):
            return True
    return False
