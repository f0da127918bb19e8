"""Jump-forward: append the text a grammar forces in one extend step, retokenized at the boundary.

Contract of `jump_forward_tokens(matcher, tokenizer, output_ids)`:
  - before: `matcher` has accepted exactly `output_ids` (the request's generated tokens so far);
  - None: nothing is forced (or no consistent retokenization was found); the matcher is unchanged;
  - (k, new_ids): the scheduler drops the last k tokens of the output (their KV is recomputed) and
    appends `new_ids` in one extend step. The matcher has already accepted output_ids[:-k] + new_ids,
    and the bytes of output_ids[:-k] + new_ids equal the bytes of output_ids followed by the forced text.

Why retokenize: the forced text often merges with the last generated token (`"` + `,"age":` is best
tokenized as `",` `"` `age` `":`), and the model has only seen natural tokenizations.
"""

from __future__ import annotations

from typing import Any

from radixrt.constrained.matcher import GrammarMatcher
from radixrt.token_ids import common_prefix_len


def jump_forward_tokens(
    matcher: GrammarMatcher, tokenizer: Any, output_ids: list[int], window: int = 1
) -> tuple[int, list[int]] | None:
    """(k, new_ids) as described in the module docstring; `window` is how many trailing tokens to retokenize."""
    forced = matcher.jump_forward()
    if forced is None:
        return None
    table = matcher.grammar.table
    for k in _windows(table, output_ids, window, matcher.max_rollback):
        tail = output_ids[len(output_ids) - k :]
        text = table.decode(tail).decode() + forced
        new_ids = encode(tokenizer, text)
        if table.decode(new_ids) != text.encode():
            continue  # the tokenizer normalised the text; try a smaller window
        same = common_prefix_len(tail, new_ids)
        k, new_ids = k - same, new_ids[same:]
        if new_ids and _apply(matcher, output_ids, k, new_ids):
            return k, new_ids
    return None


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens, for a `tokenizers.Tokenizer` or a transformers tokenizer."""
    encoded = tokenizer.encode(text, add_special_tokens=False)
    return list(getattr(encoded, "ids", encoded))


def _windows(table, output_ids: list[int], window: int, max_rollback: int) -> list[int]:
    """Candidate k, largest first: at least `window` tokens (fewer if the output is shorter), widened
    so the tail starts on a whole UTF-8 character, then falling back to k = 0."""
    k = min(window, len(output_ids), max_rollback)
    while k < min(len(output_ids), max_rollback) and not _is_utf8(table.decode(output_ids[len(output_ids) - k :])):
        k += 1
    candidates = [k] if _is_utf8(table.decode(output_ids[len(output_ids) - k :])) else []
    return candidates + ([0] if k else [])


def _apply(matcher: GrammarMatcher, output_ids: list[int], k: int, new_ids: list[int]) -> bool:
    matcher.rollback(k)
    if matcher.accept_tokens(new_ids):
        return True
    restored = matcher.accept_tokens(output_ids[len(output_ids) - k :])
    assert restored, "re-accepting tokens the matcher accepted before cannot fail"
    return False


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
