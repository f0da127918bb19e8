"""Regexes as llama.cpp grammars: the workloads' regexes translate one to one; what the
translator does not know is refused, not approximated. (llama.cpp parsing them: test_llamacpp.)"""

from __future__ import annotations

import pytest

from radixrt.bench.regex_gbnf import regex_to_gbnf
from radixrt.lang import REGEX_INT, REGEX_STR

WS = r"\x20\x09\x0A\x0D\x0C\x0B"


def test_sglang_string_and_integer_values():
    assert regex_to_gbnf(REGEX_STR + ",") == f'root ::= "\\x22" ([a-zA-Z0-9_0-9{WS}])* "\\x22" "\\x2C"\n'
    assert regex_to_gbnf(REGEX_INT + ",") == 'root ::= ([\\x2D\\x2B])? ([0-9])+ ([\\x20\\x0A])* "\\x2C"\n'


def test_groups_alternation_quantifiers_and_anchors():
    assert regex_to_gbnf("^(?:ab|c)+$") == 'root ::= ((("a" "b" | "c")))+\n'
    assert regex_to_gbnf(r"[^a-c\-]{2,3}\.") == 'root ::= ([^a-c\\x2D]){2,3} "\\x2E"\n'
    assert regex_to_gbnf(r"\D.") == "root ::= [^0-9] [^\\x0A]\n"


@pytest.mark.parametrize("pattern", ["(?=a)b", "a|*", "[ab", "(ab", "a{x}", "a^b"])
def test_unsupported_or_broken_patterns_are_refused(pattern):
    with pytest.raises(ValueError, match="regex"):
        regex_to_gbnf(pattern)
