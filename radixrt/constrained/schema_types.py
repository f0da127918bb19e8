"""Per-keyword rules of the schema check: what outlines-core enforces for each JSON type, and our rewrites.

Each handler returns (rewritten schema, keywords it consumed); the checker reports the rest.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from radixrt.constrained import string_patterns
from radixrt.constrained.ranges import integer_range_regex, number_range_regex

if TYPE_CHECKING:
    from radixrt.constrained.schema_check import SchemaChecker

_MAX_BOUND = 10**18
_NUMBER_DIGITS = ("minDigitsInteger", "maxDigitsInteger", "minDigitsFraction", "maxDigitsFraction",
                  "minDigitsExponent", "maxDigitsExponent")  # fmt: skip
_BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
_PYTHON_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list}


def properties(c: SchemaChecker, node: dict, path: str):
    consumed = {"properties", "required", "type", "additionalProperties", "minProperties", "maxProperties"}
    props, required = node["properties"], node.get("required", [])
    if not isinstance(props, dict) or not isinstance(required, list):
        c.unsupported("properties", path, "properties must be an object and required an array")
        return {}, consumed
    if "type" in node and not _allows(node["type"], "object"):
        c.unsupported("type", path, "properties on a non-object type")
    for name in required:
        if name not in props:
            c.unsupported("required", path, f"{name!r} is not in properties")
    for name in props:
        if any(ch in '"\\' or ord(ch) < 0x20 for ch in name):
            c.unsupported("properties", path, f"property name {name!r} needs JSON escaping")
    out = {name: c.visit(sub, f"{path}/properties/{name}") for name, sub in props.items()}
    low, high = _count(c, node, "minProperties", path), _count(c, node, "maxProperties", path)
    if low is not None and low > len(set(required)):
        c.unsupported("minProperties", path, "larger than the number of required properties")
    if high is not None and high < len(props):
        c.unsupported("maxProperties", path, "smaller than the number of properties")
    # Only the listed properties are ever written, which satisfies any additionalProperties.
    c.enforce("properties", *(k for k in ("required", "additionalProperties") if k in node))
    return {"properties": out, "required": list(required)}, consumed


def prefix_items(c: SchemaChecker, node: dict, path: str):
    consumed = {"prefixItems", "type", "items", "minItems", "maxItems"}
    members = node["prefixItems"]
    if not isinstance(members, list):
        c.unsupported("prefixItems", path, "must be an array")
        return {}, consumed
    if "type" in node and not _allows(node["type"], "array"):
        c.unsupported("type", path, "prefixItems on a non-array type")
    low, high = _count(c, node, "minItems", path), _count(c, node, "maxItems", path)
    if (low is not None and low > len(members)) or (high is not None and high < len(members)):
        c.unsupported("minItems" if low is not None and low > len(members) else "maxItems", path,
                      "prefixItems always writes exactly its own length")  # fmt: skip
    c.enforce("prefixItems", *(k for k in ("items",) if k in node))
    return {"prefixItems": [c.visit(m, f"{path}/prefixItems/{i}") for i, m in enumerate(members)]}, consumed


def literal(c: SchemaChecker, node: dict, path: str, keyword: str):
    values = node[keyword] if keyword == "enum" else [node[keyword]]
    if not isinstance(values, list) or not values:
        c.unsupported(keyword, path, "must be a non-empty array")
        return {}, {keyword, "type"}
    if "type" in node:
        for value in values:
            if not any(_matches(value, t) for t in _types(node["type"])):
                c.unsupported("type", path, f"{keyword} value {value!r} does not match the type")
        c.enforce("type")
    c.enforce(keyword)
    return {keyword: node[keyword]}, {keyword, "type"}


def typed(c: SchemaChecker, node: dict, path: str):
    names = _types(node["type"])
    if not names or len(set(names)) != len(names):
        c.unsupported("type", path, "must be a type name or a non-empty array of distinct names")
        return {}, {"type"}
    outs, consumed = [], {"type"}
    for name in names:
        handler = _TYPE_HANDLERS.get(name) if isinstance(name, str) else None
        if handler is None:
            c.unsupported("type", path, f"unknown type {name!r}")
            continue
        out, used = handler(c, node, path)
        outs.append(out)
        consumed |= used
    c.enforce("type")
    return (outs[0] if len(outs) == 1 else {"anyOf": outs}), consumed


def _string(c: SchemaChecker, node: dict, path: str):
    consumed = {"type", "minLength", "maxLength", "pattern", "format"}
    low, high = _count(c, node, "minLength", path), _count(c, node, "maxLength", path)
    _check_order(c, low, high, "minLength", path)
    used = [k for k in ("minLength", "pattern", "format") if k in node or (k == "minLength" and "maxLength" in node)]
    if len(used) > 1:
        c.unsupported(used[1], path, f"cannot be combined with {used[0]} (only one is enforced)")
    out: dict[str, Any] = {"type": "string"}
    if "format" in node:
        out.update(_format(c, node["format"], path))
    elif "pattern" in node:
        out.update(_pattern(c, node["pattern"], path))
    else:
        out.update({k: v for k, v in (("minLength", low), ("maxLength", high)) if v is not None})
    return out, consumed


def _format(c: SchemaChecker, fmt: Any, path: str) -> dict[str, Any]:
    c.enforce("format")
    if fmt in string_patterns.NATIVE_FORMATS:
        return {"format": fmt}
    if fmt in string_patterns.SAFE_FORMAT_PATTERNS:
        return {"pattern": f"(?:{string_patterns.SAFE_FORMAT_PATTERNS[fmt]})"}
    c.unsupported("format", path, f"format {fmt!r}; supported: {', '.join(string_patterns.SUPPORTED_FORMATS)}")
    return {}


def _pattern(c: SchemaChecker, pattern: Any, path: str) -> dict[str, Any]:
    if not isinstance(pattern, str):
        c.unsupported("pattern", path, "must be a string")
        return {}
    stripped = string_patterns.strip_anchors(pattern)
    problem = string_patterns.pattern_problem(stripped)
    if problem:
        c.unsupported("pattern", path, problem)
        return {}
    c.enforce("pattern")
    # NOTE: the group keeps a top-level `a|b` from splitting the surrounding quotes apart.
    return {"pattern": f"(?:{stripped})"}


def _integer(c: SchemaChecker, node: dict, path: str):
    consumed = {"type", "minDigits", "maxDigits", *_BOUNDS}
    bounds = _bounds(c, node, path)
    if bounds is None:
        return {"type": "integer", **{k: node[k] for k in ("minDigits", "maxDigits") if k in node}}, consumed
    lo, lo_ex, hi, hi_ex = bounds
    lo, hi = (None if lo is None else lo + lo_ex), (None if hi is None else hi - hi_ex)
    if any(k in node for k in ("minDigits", "maxDigits")):
        c.unsupported("minDigits" if "minDigits" in node else "maxDigits", path, "cannot be combined with bounds")
    if lo is not None and hi is not None and lo > hi:
        c.unsupported("minimum", path, "the integer range is empty")
        return {}, consumed
    return c.placeholder(integer_range_regex(lo, hi), "integer"), consumed


def _number(c: SchemaChecker, node: dict, path: str):
    consumed = {"type", *_NUMBER_DIGITS, *_BOUNDS}
    bounds = _bounds(c, node, path)
    if bounds is None:
        return {"type": "number", **{k: node[k] for k in _NUMBER_DIGITS if k in node}}, consumed
    if any(k in node for k in _NUMBER_DIGITS):
        c.unsupported(next(k for k in _NUMBER_DIGITS if k in node), path, "cannot be combined with bounds")
    lo, lo_ex, hi, hi_ex = bounds
    try:
        pattern = number_range_regex(lo, hi, exclusive_lo=lo_ex, exclusive_hi=hi_ex)
    except ValueError:
        c.unsupported("minimum", path, "no number with at most integer precision fits the bounds")
        return {}, consumed
    return c.placeholder(pattern, "number"), consumed


def _bounds(c: SchemaChecker, node: dict, path: str) -> tuple[int | None, bool, int | None, bool] | None:
    """The tightest integral (lo, lo_exclusive, hi, hi_exclusive) bounds, or None without bounds.

    A fractional bound is rounded inwards, which only narrows what the grammar allows.
    """
    lo, lo_ex, hi, hi_ex, seen = None, False, None, False, False
    for key in (k for k in _BOUNDS if k in node):
        value, upper, exclusive = node[key], "aximum" in key, key.startswith("exclusive")
        if isinstance(value, bool) or not isinstance(value, int | float) or not abs(value) < _MAX_BOUND:
            c.unsupported(key, path, f"must be a number below {_MAX_BOUND:.0e} in magnitude")
            continue
        if not float(value).is_integer():
            value, exclusive = (math.floor(value) if upper else math.ceil(value)), False
        value, seen = int(value), True
        c.enforce(key)
        if upper and (hi is None or value < hi or (value == hi and exclusive)):
            hi, hi_ex = value, exclusive
        elif not upper and (lo is None or value > lo or (value == lo and exclusive)):
            lo, lo_ex = value, exclusive
    return (lo, lo_ex, hi, hi_ex) if seen else None


def _array(c: SchemaChecker, node: dict, path: str):
    consumed = {"type", "items", "minItems", "maxItems", "uniqueItems"}
    low, high = _count(c, node, "minItems", path), _count(c, node, "maxItems", path)
    _check_order(c, low, high, "minItems", path)
    if node.get("uniqueItems") is True and (high is None or high > 1):
        c.unsupported("uniqueItems", path, "not enforced")
    out: dict[str, Any] = {"type": "array"}
    items = node.get("items", True)
    if items is False:
        high = 0
    elif isinstance(items, dict):
        out["items"] = c.visit(items, f"{path}/items")
    elif items is not True:
        c.unsupported("items", path, "the array form of items is not supported (use prefixItems)")
    if high == 0 and (low or 0) > 0:
        c.unsupported("minItems", path, "no items are allowed")
    c.enforce(*(k for k in consumed if k in node))
    return {**out, **{k: v for k, v in (("minItems", low), ("maxItems", high)) if v is not None}}, consumed


def _object(c: SchemaChecker, node: dict, path: str):
    consumed = {"type", "additionalProperties", "minProperties", "maxProperties", "required"}
    if node.get("required"):
        c.unsupported("required", path, "required without properties")
    low, high = _count(c, node, "minProperties", path), _count(c, node, "maxProperties", path)
    out: dict[str, Any] = {"type": "object"}
    extra = node.get("additionalProperties", True)
    if extra is False:
        high = 0
    elif isinstance(extra, dict):
        out["additionalProperties"] = c.visit(extra, f"{path}/additionalProperties")
    if high is not None and high > 0:
        c.unsupported("maxProperties", path, "only maxProperties 0 is enforced for free-form objects")
    if (low or 0) > (1 if high is None else high):
        c.unsupported("minProperties", path, "free-form keys may repeat, so at most 1 is enforced")
    c.enforce(*(k for k in consumed if k in node))
    return {**out, **{k: v for k, v in (("minProperties", low), ("maxProperties", high)) if v is not None}}, consumed


def _plain(name: str):
    def handler(c: SchemaChecker, node: dict, path: str):
        return {"type": name}, {"type"}

    return handler


_TYPE_HANDLERS = {
    "string": _string,
    "integer": _integer,
    "number": _number,
    "array": _array,
    "object": _object,
    "boolean": _plain("boolean"),
    "null": _plain("null"),
}


def _count(c: SchemaChecker, node: dict, key: str, path: str) -> int | None:
    value = node.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or not float(value).is_integer():
        c.unsupported(key, path, "must be a non-negative integer")
        return None
    c.enforce(key)
    return int(value)


def _check_order(c: SchemaChecker, low: int | None, high: int | None, key: str, path: str) -> None:
    if low is not None and high is not None and low > high:
        c.unsupported(key, path, "greater than its maximum")


def _types(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _allows(type_value: Any, name: str) -> bool:
    return name in _types(type_value)


def _matches(value: Any, type_name: Any) -> bool:
    if type_name == "null":
        return value is None
    if type_name in ("integer", "number"):
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return is_number and (type_name == "number" or float(value).is_integer())
    expected = _PYTHON_TYPES.get(type_name)
    return expected is not None and isinstance(value, expected)
