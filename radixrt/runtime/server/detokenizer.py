"""Incremental detokenization that never splits a UTF-8 character."""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decodes a short window `ids[prefix_offset:]` and diffs it against `ids[prefix_offset:read_offset]`,
    so sentencepiece's leading spaces survive and the cost per step stays constant. A window
    whose text ends in U+FFFD is an incomplete UTF-8 sequence: it is held back until the next token.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, new_ids: list[int]) -> str:
        """Append ids; return the text they complete (possibly empty)."""
        self.ids.extend(new_ids)
        prefix_text = self._decode(self.ids[self._prefix_offset : self._read_offset])
        window_text = self._decode(self.ids[self._prefix_offset :])
        if len(window_text) <= len(prefix_text) or window_text.endswith(REPLACEMENT):
            return ""
        delta = window_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.ids)
        self.text += delta
        return delta

    def finish(self) -> str:
        """Flush whatever is held back (a truncated character stays as U+FFFD)."""
        full = self._decode(self.ids)
        delta = full[len(self.text) :] if full.startswith(self.text) else ""
        self.text = full if delta or full == self.text else self.text
        return delta


def stop_safe_len(text: str, stops: list[str]) -> int:
    """Length of `text` that can be shown while a stop string might still be forming at its end."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold


def trim_at_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """Cut `text` at the earliest stop string; return (text, matched stop or None)."""
    best: tuple[int, str] | None = None
    for stop in stops:
        pos = text.find(stop)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, stop)
    return (text, None) if best is None else (text[: best[0]], best[1])
