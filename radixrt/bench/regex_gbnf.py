"""Regular expressions as llama.cpp grammars (GBNF), for the llama.cpp baseline's `regex` gens.

llama.cpp constrains sampling with GBNF grammars; it converts JSON schemas itself but takes no
regex. The workloads' regexes (SGLang's REGEX_STR / REGEX_INT / REGEX_FLOAT and literal text)
use a small subset, translated here one to one: literals, `.`, character classes with ranges and
negation, the escapes \\d \\w \\s (and \\D \\W \\S), groups (also `(?:...)`), alternation and the
quantifiers * + ? {m} {m,} {m,n}. Anchors ^ and $ are dropped (a grammar matches the whole output).
Anything else raises ValueError.
"""

from __future__ import annotations

_CLASSES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": "\\x20\\x09\\x0A\\x0D\\x0C\\x0B"}  # GBNF class bodies
_ESCAPED = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
_QUANTIFIERS = "*+?{"


def regex_to_gbnf(pattern: str) -> str:
    """A GBNF grammar whose `root` matches exactly the strings `pattern` fully matches."""
    parser = _Parser(pattern)
    body = parser.alternation()
    if parser.pos != len(pattern):
        raise ValueError(f"regex {pattern!r}: unexpected {pattern[parser.pos]!r} at {parser.pos}")
    return f"root ::= {body}\n"


def _char(c: str) -> str:
    """One character as a GBNF escape (safe inside both literals and classes)."""
    return c if c.isalnum() and c.isascii() else f"\\x{ord(c):02X}" if ord(c) < 256 else f"\\u{ord(c):04X}"


class _Parser:
    def __init__(self, pattern: str):
        self.p, self.pos = pattern, 0

    def _peek(self) -> str | None:
        return self.p[self.pos] if self.pos < len(self.p) else None

    def _take(self) -> str:
        c = self.p[self.pos]
        self.pos += 1
        return c

    def _fail(self, what: str) -> ValueError:
        return ValueError(f"regex {self.p!r}: {what} at {self.pos} is not supported")

    def alternation(self) -> str:
        branches = [self.sequence()]
        while self._peek() == "|":
            self._take()
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else "(" + " | ".join(branches) + ")"

    def sequence(self) -> str:
        items = []
        while (c := self._peek()) is not None and c not in "|)":
            atom = self.atom()
            if atom is None:
                continue
            while self._peek() is not None and self._peek() in _QUANTIFIERS:
                atom = f"({atom}){self.quantifier()}"
            items.append(atom)
        return " ".join(items) if items else '""'

    def atom(self) -> str | None:
        c = self._take()
        if c in "^$":
            if (c == "^" and self.pos != 1) or (c == "$" and self.pos != len(self.p)):
                raise self._fail("an anchor inside the pattern")
            return None
        if c == "(":
            if self.p.startswith("?:", self.pos):
                self.pos += 2
            elif self._peek() == "?":
                raise self._fail("a group extension")
            inner = self.alternation()
            if self._peek() != ")":
                raise self._fail("an unclosed group")
            self._take()
            return f"({inner})"
        if c == "[":
            return self.char_class()
        if c == ".":
            return "[^\\x0A]"
        if c == "\\":
            e = self._take()
            if e.lower() in _CLASSES:
                return ("[^" if e.isupper() else "[") + _CLASSES[e.lower()] + "]"
            return f'"{_char(_ESCAPED.get(e, e))}"'
        if c in _QUANTIFIERS + ")":
            raise self._fail(f"{c!r} with nothing to repeat")
        return f'"{_char(c)}"'

    def char_class(self) -> str:
        negate = self._peek() == "^"
        if negate:
            self._take()
        parts, first = [], True
        while (c := self._peek()) != "]" or first:
            if c is None:
                raise self._fail("an unclosed class")
            first = False
            self._take()
            if c == "\\":
                e = self._take()
                if e in _CLASSES:
                    parts.append(_CLASSES[e])
                    continue
                c = _ESCAPED.get(e, e)
            if self._peek() == "-" and self.pos + 1 < len(self.p) and self.p[self.pos + 1] != "]":
                self._take()
                end = self._take()
                if end == "\\":
                    end = self._take()
                    end = _ESCAPED.get(end, end)
                parts.append(f"{_char(c)}-{_char(end)}")
            else:
                parts.append(_char(c))
        self._take()
        return ("[^" if negate else "[") + "".join(parts) + "]"

    def quantifier(self) -> str:
        q = self._take()
        if q != "{":
            return q
        end = self.p.find("}", self.pos)
        if end < 0:
            raise self._fail("an unclosed {m,n}")
        body, self.pos = self.p[self.pos : end], end + 1
        low, _, high = body.partition(",")
        if not low.isdigit() or (high and not high.isdigit()):
            raise self._fail(f"the repeat {{{body}}}")
        return "{" + body + "}"
