"""Per-request cursor into a compiled grammar (wraps an outlines-core Guide).

Terminators (the EOS ids and the request's stop token ids) are accepted only where the regex is
complete; accepting one advances the Guide by the end token (see grammar.py), so termination,
rollback and state all live in the Guide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import outlines_core
import torch

if TYPE_CHECKING:
    from radixrt.constrained.grammar import CompiledGrammar


class GrammarMatcher:
    """Which tokens may come next for one request; accepts tokens, rolls back, fills bitmask rows."""

    def __init__(self, grammar: CompiledGrammar, *, stop_token_ids=(), max_rollback: int = 64):
        self.grammar = grammar
        self.terminators = frozenset(grammar.table.eos_token_ids) | frozenset(stop_token_ids)
        self.max_rollback = max_rollback
        self._end = grammar.table.end_token_id
        self._guide = outlines_core.Guide(grammar.index, max_rollback=max_rollback)

    @property
    def state(self) -> int:
        return self._guide.get_state()

    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; False (and no change) when the grammar does not allow it here."""
        if self._guide.is_finished():
            return False
        if token_id in self.terminators:
            if not self.grammar.is_complete(self.state):
                return False
            token_id = self._end
        try:
            self._guide.advance(token_id, return_tokens=False)
        except (ValueError, OverflowError):
            return False
        return True

    def accept_tokens(self, token_ids: list[int]) -> bool:
        """Accept all of `token_ids`, or none of them (returns False and leaves the state unchanged)."""
        for count, token_id in enumerate(token_ids):
            if not self.accept_token(token_id):
                self.rollback(count)
                return False
        return True

    def rollback(self, n_tokens: int) -> None:
        """Undo the last `n_tokens` accepted tokens (at most `max_rollback`)."""
        if n_tokens > self._guide.get_allowed_rollback():
            raise ValueError(f"cannot roll back {n_tokens} tokens; {self._guide.get_allowed_rollback()} are remembered")
        if n_tokens:
            self._guide.rollback_state(n_tokens)

    def is_final(self) -> bool:
        """True when the text so far matches the whole grammar (a terminator may come next)."""
        return self._guide.is_finished() or self.grammar.is_complete(self.state)

    def is_terminated(self) -> bool:
        """True after a terminator was accepted, or when the match is complete and nothing else can follow."""
        if self._guide.is_finished():
            return True
        state = self.state
        return self.grammar.is_complete(state) and not self.grammar.has_continuation(state)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write this request's allowed tokens into `bitmask[row]` (int32 [B, ceil(V/32)], CPU, contiguous).

        Terminator bits are set only where the grammar is complete; ids beyond the tokenizer are never allowed.
        """
        assert bitmask.dtype == torch.int32 and bitmask.device.type == "cpu" and bitmask.is_contiguous()
        words = bitmask[row]  # [W]
        finished = self._guide.is_finished()
        if finished:
            words.zero_()
        else:
            self._guide.write_mask_into(words.data_ptr(), words.numel(), 4)
        complete = finished or self.grammar.is_complete(self.state)
        bits = words.numpy().view(np.uint32)
        # NOTE: the end token's bit may also have been written for a NUL inside R; it is decided here.
        for token_id in self.terminators | {self._end}:
            if token_id < 32 * bits.size:
                word, bit = divmod(token_id, 32)
                if complete and token_id in self.terminators:
                    bits[word] |= np.uint32(1 << bit)
                else:
                    bits[word] &= ~np.uint32(1 << bit)

    def jump_forward(self) -> str | None:
        """The text the grammar forces from here (e.g. `{"name":"`), or None when nothing is forced.

        Cut at the last whole UTF-8 character, so the string never ends in half a character.
        """
        if self._guide.is_finished():
            return None
        return _utf8_prefix(self.grammar.forced_bytes(self.state)) or None


def _utf8_prefix(data: bytes) -> str:
    """The longest prefix of `data` that is whole UTF-8 characters (a token may split a character)."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode()
        except UnicodeDecodeError:
            continue
    return ""
