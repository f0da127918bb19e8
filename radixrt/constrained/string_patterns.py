"""String `pattern`s and `format`s that are safe to put between the quotes of a JSON string.

outlines-core pastes a schema's `pattern` between two quote characters unchanged, so a pattern that can
produce `"`, `\\` or a control character would let the model write invalid JSON. We accept a pattern
only when every character it can produce is safe, judged from Python's parse of the pattern (its
syntax and outlines-core's Rust syntax agree on everything we accept).
"""

from __future__ import annotations

try:  # Python >= 3.11
    import re._constants as sre_constants
    import re._parser as sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

import re

# outlines-core's own regexes for these formats produce only safe characters.
NATIVE_FORMATS = ("date-time", "date", "time", "uuid")
# Its email and uri regexes can produce quotes and control characters; we use safe ones instead.
SAFE_FORMAT_PATTERNS = {
    "email": r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9-]+(\.[a-zA-Z0-9-]+)*\.[a-zA-Z]{2,}",
    "uri": r"(https?|ftp)://[a-zA-Z0-9.-]+(:[0-9]+)?(/[a-zA-Z0-9._~%!$&'()*+,;=:@/-]*)?"
    r"(\?[a-zA-Z0-9._~%!$&'()*+,;=:@/?-]*)?(#[a-zA-Z0-9._~%!$&'()*+,;=:@/?-]*)?",
}
SUPPORTED_FORMATS = (*NATIVE_FORMATS, *SAFE_FORMAT_PATTERNS)

_C = sre_constants
_SAFE_CATEGORIES = {_C.CATEGORY_DIGIT, _C.CATEGORY_WORD}
_REPEATS = {_C.MAX_REPEAT, _C.MIN_REPEAT} | ({_C.POSSESSIVE_REPEAT} if hasattr(_C, "POSSESSIVE_REPEAT") else set())


_UNSAFE_CODES = frozenset([*range(0x20), ord('"'), ord("\\")])


def _is_unsafe_char(code: int) -> bool:
    return code in _UNSAFE_CODES


def strip_anchors(pattern: str) -> str:
    """`pattern` without a leading `^` and a trailing unescaped `$` (the grammar always matches in full)."""
    pattern = pattern.removeprefix("^")
    trailing_backslashes = len(pattern[:-1]) - len(pattern[:-1].rstrip("\\"))
    if pattern.endswith("$") and trailing_backslashes % 2 == 0:
        pattern = pattern[:-1]
    return pattern


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` (anchors already stripped) cannot be used inside a JSON string, or None if it can."""
    if _has_nested_class(pattern):
        # Rust reads `[a[^b]]`, `[[:^alpha:]]` and `[a&&b]` as set operations Python's parser does not know.
        return "nested character classes and class set operations are not supported"
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as exc:
        return f"invalid regex ({exc})"
    except RecursionError:
        return "pattern nests too deeply"
    return _items_problem(list(parsed))


def _has_nested_class(pattern: str) -> bool:
    in_class = escaped = False
    for i, ch in enumerate(pattern):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class and (ch == "[" or pattern[i : i + 2] in ("&&", "--", "~~")):
            return True
        elif ch == "[":
            in_class = True
        elif ch == "]" and in_class and pattern[i - 1] != "[":
            in_class = False
    return False


def _items_problem(items: list) -> str | None:
    for op, arg in items:
        problem = _item_problem(op, arg)
        if problem:
            return problem
    return None


def _item_problem(op, arg) -> str | None:
    if op is _C.LITERAL:
        return f"it can produce {chr(arg)!r}, which JSON must escape" if _is_unsafe_char(arg) else None
    if op is _C.IN:
        return _class_problem(arg)
    if op is _C.BRANCH:
        return next(filter(None, (_items_problem(list(b)) for b in arg[1])), None)
    if op is _C.SUBPATTERN:
        return _items_problem(list(arg[-1]))
    if op in _REPEATS:
        return _items_problem(list(arg[2]))
    if op is _C.ANY or op is _C.NOT_LITERAL:
        return "'.' and negated characters can produce characters JSON must escape"
    if op is _C.AT:
        return "anchors are only supported at the very start and end"
    return f"unsupported regex feature {str(op).lower()} (look-around and backreferences are not supported)"


def _class_problem(members: list) -> str | None:
    for op, arg in members:
        if op is _C.NEGATE:
            return "negated character classes can produce characters JSON must escape"
        if op is _C.LITERAL and _is_unsafe_char(arg):
            return f"it can produce {chr(arg)!r}, which JSON must escape"
        if op is _C.RANGE and any(arg[0] <= c <= arg[1] for c in _UNSAFE_CODES):
            return f"the range {chr(arg[0])!r}-{chr(arg[1])!r} includes characters JSON must escape"
        if op is _C.CATEGORY and arg not in _SAFE_CATEGORIES:
            return f"character category {str(arg).lower()} can produce characters JSON must escape"
    return None
