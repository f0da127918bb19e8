"""Regexes for bounded numbers: JSON integers in [lo, hi] and JSON numbers between integer bounds.

outlines-core drops `minimum`/`maximum`; these small regexes enforce them instead.
Numbers are written the way a JSON encoder does: no leading zeros, no "+", and "-0" never appears.
"""

from __future__ import annotations

import math

_DIGIT_RUN = "[0-9]"


def integer_range_regex(lo: int | None, hi: int | None) -> str:
    """Matches exactly the decimal integers n with lo <= n <= hi (None: unbounded)."""
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"empty integer range [{lo}, {hi}]")
    parts = []
    if lo is None or lo < 0:
        # negatives -m with m in [max(1, -hi), -lo]
        neg_hi = None if lo is None else -lo
        neg_lo = 1 if hi is None or hi >= 0 else -hi
        parts.append("-" + _natural_range(neg_lo, neg_hi))
    if hi is None or hi >= 0:
        parts.append(_natural_range(max(lo or 0, 0), hi))
    return _alternation(parts)


def number_range_regex(
    lo: int | None, hi: int | None, *, exclusive_lo: bool = False, exclusive_hi: bool = False
) -> str:
    """Matches JSON numbers x within integer bounds (no exponent form).

    Integral values are written as "n" or "n.0"; other values as "n.ddd" with a non-zero last digit,
    which lie strictly inside (n, n+1) (or (-(m+1), -m) for "-m.ddd").
    """
    int_lo = None if lo is None else lo + int(exclusive_lo)
    int_hi = None if hi is None else hi - int(exclusive_hi)
    parts = []
    if int_lo is None or int_hi is None or int_lo <= int_hi:
        parts.append(f"({integer_range_regex(int_lo, int_hi)})(\\.0+)?")
    fraction = r"\.[0-9]*[1-9]"
    # n.ddd with n >= 0 lies in (n, n+1): inside the bounds when lo <= n and n + 1 <= hi
    pos_lo, pos_hi = max(lo if lo is not None else 0, 0), None if hi is None else hi - 1
    if pos_hi is None or pos_lo <= pos_hi:
        parts.append(f"({_natural_range(pos_lo, pos_hi)}){fraction}")
    # -m.ddd lies in (-(m+1), -m): inside the bounds when lo <= -(m+1) and -m <= hi
    neg_lo, neg_hi = max(-hi if hi is not None else 0, 0), None if lo is None else -lo - 1
    if neg_hi is None or neg_lo <= neg_hi:
        parts.append(f"-({_natural_range(neg_lo, neg_hi)}){fraction}")
    if not parts:
        raise ValueError(f"empty number range between {lo} and {hi}")
    return _alternation(parts)


def integral_bound(value: float, *, upper: bool) -> int:
    """The tightest integer bound implied by a numeric bound (floor for upper, ceil for lower)."""
    return math.floor(value) if upper else math.ceil(value)


def _natural_range(lo: int, hi: int | None) -> str:
    """Matches the decimal naturals n with lo <= n <= hi (hi None: unbounded), lo >= 0."""
    assert lo >= 0 and (hi is None or hi >= lo)
    parts = []
    width = len(str(lo))
    top = hi if hi is not None else 10**width - 1
    for digits in range(width, len(str(top)) + 1):
        low = max(lo, 0 if digits == 1 else 10 ** (digits - 1))
        high = min(top, 10**digits - 1)
        if low <= high:
            parts.append(_same_width_range(str(low), str(high)))
    if hi is None:
        parts.append(f"[1-9]{_DIGIT_RUN}{{{width},}}")
    return _alternation(parts)


def _same_width_range(low: str, high: str) -> str:
    """Matches digit strings s of len(low) with low <= s <= high (both the same width)."""
    if not low:
        return ""
    rest = len(low) - 1
    if low[0] == high[0]:
        return low[0] + _same_width_range(low[1:], high[1:])
    if low[1:] == "0" * rest and high[1:] == "9" * rest:
        return _digit_class(low[0], high[0]) + _repeat(rest)
    parts = [low[0] + _same_width_range(low[1:], "9" * rest)]
    if int(low[0]) + 1 <= int(high[0]) - 1:
        parts.append(_digit_class(str(int(low[0]) + 1), str(int(high[0]) - 1)) + _repeat(rest))
    parts.append(high[0] + _same_width_range("0" * rest, high[1:]))
    return _alternation(parts)


def _digit_class(low: str, high: str) -> str:
    return low if low == high else f"[{low}-{high}]"


def _repeat(count: int) -> str:
    if count == 0:
        return ""
    return _DIGIT_RUN if count == 1 else f"{_DIGIT_RUN}{{{count}}}"


def _alternation(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else "(" + "|".join(parts) + ")"
