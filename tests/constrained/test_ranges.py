"""Range regexes for bounded integers and numbers, checked exhaustively against Python's re."""

from __future__ import annotations

import itertools
import re

import pytest

from radixrt.constrained.ranges import integer_range_regex, number_range_regex

BOUNDS = [None, -1000, -101, -100, -99, -10, -9, -1, 0, 1, 5, 9, 10, 99, 100, 101, 789, 1000]


def _pairs(strict: bool):
    for lo, hi in itertools.product(BOUNDS, BOUNDS):
        if lo is None or hi is None or lo < hi or (lo == hi and not strict):
            yield lo, hi


@pytest.mark.parametrize("lo,hi", list(_pairs(strict=False)))
def test_integer_range_matches_exactly_the_integers_in_range(lo, hi):
    pattern = re.compile(integer_range_regex(lo, hi))
    for value in range(-1200, 1201):
        inside = (lo is None or value >= lo) and (hi is None or value <= hi)
        assert bool(pattern.fullmatch(str(value))) == inside, (value, pattern.pattern)
    assert not any(pattern.fullmatch(s) for s in ("-0", "01", "", "+1", "1.0"))
    assert bool(pattern.fullmatch("123456789012")) == (hi is None)
    assert bool(pattern.fullmatch("-123456789012")) == (lo is None)


def test_empty_integer_range_is_an_error():
    with pytest.raises(ValueError):
        integer_range_regex(5, 4)


NUMBERS = [f"{sign}{whole}{frac}" for sign in ("", "-") for whole in (0, 1, 9, 10, 99, 100, 101, 999, 1000)
           for frac in ("", ".0", ".00", ".5", ".25", ".01", ".999")]  # fmt: skip


@pytest.mark.parametrize("exclusive", [(False, False), (True, False), (False, True), (True, True)])
def test_number_range_allows_only_numbers_within_the_bounds(exclusive):
    exclusive_lo, exclusive_hi = exclusive
    for lo, hi in _pairs(strict=True):
        pattern = re.compile(number_range_regex(lo, hi, exclusive_lo=exclusive_lo, exclusive_hi=exclusive_hi))
        for text in NUMBERS:
            value = float(text)
            above = lo is None or (value > lo if exclusive_lo else value >= lo)
            below = hi is None or (value < hi if exclusive_hi else value <= hi)
            if text.startswith("-0") and value == 0:
                continue  # "-0" is never written
            assert bool(pattern.fullmatch(text)) == (above and below), (lo, hi, exclusive, text)
