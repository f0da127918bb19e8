"""A compiled grammar: the outlines-core Index of one regex over one vocabulary, shared by requests.

The Index is built for `(?:R)\x00`, where NUL is spelled only by the end token (the primary EOS).
outlines-core 0.2 marks a state final as soon as R may end there, and then (a) drops one-byte
continuations out of final states and (b) builds a leftmost-first DFA that forgets longer
alternatives once a shorter one matched (`yes|yesterday` would never write "yesterday"). With the
sentinel no state inside R is final, so every continuation survives; "R is complete here" becomes
"the end token leads to a final state".

Per-state facts every request needs (complete?, anything but the end token allowed?, forced bytes)
are computed once per state and memoised here; the scheduler thread is their only writer.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import outlines_core

from radixrt.constrained.matcher import GrammarMatcher
from radixrt.constrained.vocabulary import TokenTable

_FORMAT = b"radixrt-grammar-1"
# Above this many allowed tokens, look at a few first: their common prefix is almost always empty.
_LCP_PROBE = 64


@dataclass(eq=False)
class CompiledGrammar:
    """One compiled grammar; `new_matcher()` gives each request its own cursor into it."""

    index: outlines_core.Index
    table: TokenTable
    regex: str
    num_states: int
    nbytes: int
    compile_seconds: float
    _forced: dict[int, bytes] = field(default_factory=dict, repr=False)
    _continues: dict[int, bool] = field(default_factory=dict, repr=False)
    _complete: dict[int, bool] = field(default_factory=dict, repr=False)

    def new_matcher(self, stop_token_ids: tuple[int, ...] | list[int] = (), max_rollback: int = 64) -> GrammarMatcher:
        """A GrammarMatcher at the start state; `stop_token_ids` end the request like EOS."""
        return GrammarMatcher(self, stop_token_ids=stop_token_ids, max_rollback=max_rollback)

    def forced_bytes(self, state: int) -> bytes:
        """The bytes every continuation from `state` starts with (empty when the next byte is free).

        Walks token by token: all allowed tokens share a prefix P, so P is forced; when one token
        spells exactly P we follow it and continue. A final state forces nothing (EOS may come next).
        """
        if state not in self._forced:
            self._forced[state] = self._walk_forced(state)
        return self._forced[state]

    def is_complete(self, state: int) -> bool:
        """True when the text that led to `state` matches the whole regex (EOS may come next)."""
        if state not in self._complete:
            after_end = self.index.get_next_state(state, self.table.end_token_id)
            self._complete[state] = after_end is not None and self.index.is_final_state(after_end)
        return self._complete[state]

    def has_continuation(self, state: int) -> bool:
        """True when some token other than the end token is allowed in `state`."""
        if state not in self._continues:
            end = self.table.end_token_id
            self._continues[state] = any(t != end for t in self.index.get_allowed_tokens(state) or ())
        return self._continues[state]

    def _walk_forced(self, state: int) -> bytes:
        forced, seen = b"", set()
        while state not in seen and not self.is_complete(state):
            seen.add(state)
            prefix, exact = self._common_prefix(self.index.get_allowed_tokens(state) or [])
            forced += prefix
            if not prefix or exact is None:
                break
            state = self.index.get_next_state(state, exact)
            if state is None:
                break
        return forced

    def _common_prefix(self, tokens: list[int]) -> tuple[bytes, int | None]:
        """(common prefix of the tokens' bytes, a token spelling exactly that prefix or None)."""
        spell = self.table.token_bytes
        if len(tokens) > _LCP_PROBE and not os.path.commonprefix([spell.get(t, b"") for t in tokens[:_LCP_PROBE]]):
            return b"", None
        spellings = [spell[t] for t in tokens if t in spell]
        prefix = os.path.commonprefix(spellings) if spellings else b""
        exact = next((t for t in tokens if spell.get(t) == prefix), None) if prefix else None
        return prefix, exact

    def to_bytes(self) -> bytes:
        """A self-contained serialisation for the disk cache (vocabulary not included)."""
        _, (binary,) = self.index.__reduce__()
        regex = self.regex.encode()
        header = struct.pack("<IdI", self.num_states, self.compile_seconds, len(regex))
        return _FORMAT + header + regex + binary

    @staticmethod
    def from_bytes(data: bytes, table: TokenTable) -> CompiledGrammar:
        if not data.startswith(_FORMAT):
            raise ValueError("not a radixrt grammar file")
        pos = len(_FORMAT)
        num_states, seconds, regex_len = struct.unpack_from("<IdI", data, pos)
        pos += struct.calcsize("<IdI")
        regex = data[pos : pos + regex_len].decode()
        binary = data[pos + regex_len :]
        index = outlines_core.Index.from_binary(binary)
        return CompiledGrammar(index, table, regex, num_states, len(binary), seconds)
