"""Per-request cursor into a compiled grammar (wraps an outlines-core Guide).

outlines-core raises when a Guide advances on EOS, so termination is tracked here: EOS (and the
request's stop token ids) are accepted only in a final state, and then end the match.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np
import outlines_core
import torch

if TYPE_CHECKING:
    from radixrt.constrained.grammar import CompiledGrammar

# A history entry for a token that ended the match (it never entered the Guide).
_TERMINATOR = True


class GrammarMatcher:
    """Which tokens may come next for one request; accepts tokens, rolls back, fills bitmask rows."""

    def __init__(self, grammar: CompiledGrammar, *, stop_token_ids=(), max_rollback: int = 64):
        self.grammar = grammar
        self.terminators = frozenset(grammar.table.eos_token_ids) | frozenset(stop_token_ids)
        self.max_rollback = max_rollback
        self._guide = outlines_core.Guide(grammar.index, max_rollback=max_rollback)
        self._terminated = False
        # NOTE: one entry per accepted token (True: a terminator), newest last, for rollback.
        self._history: deque[bool] = deque(maxlen=max_rollback)

    @property
    def state(self) -> int:
        return self._guide.get_state()

    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; False (and no change) when the grammar does not allow it here."""
        if self._terminated:
            return False
        if token_id in self.terminators:
            if not self._guide.is_finished():
                return False
            self._terminated = True
            self._history.append(_TERMINATOR)
            return True
        try:
            self._guide.advance(token_id, return_tokens=False)
        except (ValueError, OverflowError):
            return False
        self._history.append(not _TERMINATOR)
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
        if n_tokens > len(self._history):
            raise ValueError(f"cannot roll back {n_tokens} tokens; only {len(self._history)} are remembered")
        guide_steps = 0
        for _ in range(n_tokens):
            if self._history.pop() == _TERMINATOR:
                self._terminated = False
            else:
                guide_steps += 1
        if guide_steps:
            self._guide.rollback_state(guide_steps)

    def is_final(self) -> bool:
        """True when the text so far is a complete match (EOS may come next)."""
        return self._terminated or self._guide.is_finished()

    def is_terminated(self) -> bool:
        """True after a terminator was accepted, or when the match is complete and nothing else can follow."""
        if self._terminated:
            return True
        return self._guide.is_finished() and not self.grammar.has_continuation(self.state)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write this request's allowed tokens into `bitmask[row]` (int32 [B, ceil(V/32)], CPU, contiguous).

        Terminator bits are set only in a final state; ids beyond the tokenizer are never allowed.
        """
        assert bitmask.dtype == torch.int32 and bitmask.device.type == "cpu" and bitmask.is_contiguous()
        words = bitmask[row]  # [W]
        if self._terminated:
            words.zero_()
        else:
            self._guide.write_mask_into(words.data_ptr(), words.numel(), 4)
        bits = words.numpy().view(np.uint32)
        final = self.is_final()
        for token_id in self.terminators:
            if token_id < 32 * bits.size:
                word, bit = divmod(token_id, 32)
                if final:
                    bits[word] |= np.uint32(1 << bit)
                else:
                    bits[word] &= ~np.uint32(1 << bit)

    def jump_forward(self) -> str | None:
        """The text the grammar forces from here (e.g. `{"name":"`), or None when nothing is forced.

        Cut at the last whole UTF-8 character, so the string never ends in half a character.
        """
        if self._terminated:
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
