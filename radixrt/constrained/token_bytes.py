"""Map the token strings of a `tokenizer.json` back to the raw bytes each token stands for.

Two spellings cover the llama family, qwen2 and most chat models:

- byte-level BPE (GPT-2): every byte is drawn as one printable character, e.g. b" " -> "Ġ",
  b"\\n" -> "Ċ"; a token is the string of those characters.
- sentencepiece: "▁" stands for a space and byte-fallback tokens are spelled "<0x0A>".
"""

from __future__ import annotations

import re
from typing import Any

_SENTENCEPIECE_SPACE = "▁"
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def gpt2_byte_alphabet() -> dict[str, int]:
    """The printable character GPT-2 byte-level BPE draws for each byte, inverted: char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in chars:
            # NOTE: unprintable bytes are drawn as 256, 257, ... in byte order.
            chars[b] = 256 + shifted
            shifted += 1
    return {chr(c): b for b, c in chars.items()}


def is_byte_level(tokenizer_json: dict[str, Any]) -> bool:
    """True when the tokenizer spells tokens in GPT-2's byte alphabet (a ByteLevel decoder or pre-tokenizer)."""
    return _mentions_byte_level(tokenizer_json.get("decoder")) or _mentions_byte_level(
        tokenizer_json.get("pre_tokenizer")
    )


def _mentions_byte_level(component: Any) -> bool:
    if isinstance(component, dict):
        if component.get("type") == "ByteLevel":
            return True
        return any(_mentions_byte_level(v) for v in component.values())
    if isinstance(component, list):
        return any(_mentions_byte_level(v) for v in component)
    return False


def model_vocab(tokenizer_json: dict[str, Any]) -> dict[str, int]:
    """token string -> id of the tokenizer model (BPE/WordLevel dict or Unigram list)."""
    model = tokenizer_json["model"]
    vocab = model["vocab"]
    if isinstance(vocab, dict):
        return vocab
    if model.get("type") == "Unigram":
        return {piece: i for i, (piece, _score) in enumerate(vocab)}
    raise ValueError(f"unsupported tokenizer model {model.get('type')!r}")


def token_bytes_table(tokenizer_json: dict[str, Any], excluded_ids: set[int]) -> dict[int, bytes]:
    """id -> raw bytes for every ordinary token; excluded ids, added tokens and empty tokens are left out."""
    vocab = model_vocab(tokenizer_json)
    excluded = excluded_ids | {t["id"] for t in tokenizer_json.get("added_tokens", [])}
    to_bytes = _byte_level_decoder() if is_byte_level(tokenizer_json) else _sentencepiece_bytes
    table = {}
    for token, token_id in vocab.items():
        if token_id in excluded:
            continue
        raw = to_bytes(token)
        if raw:
            table[token_id] = raw
    return table


def _byte_level_decoder():
    alphabet = gpt2_byte_alphabet()

    def to_bytes(token: str) -> bytes | None:
        try:
            return bytes(alphabet[c] for c in token)
        except KeyError:
            return None  # a token outside the byte alphabet (e.g. a stray special) has no bytes

    return to_bytes


def _sentencepiece_bytes(token: str) -> bytes:
    fallback = _BYTE_FALLBACK.fullmatch(token)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    return token.replace(_SENTENCEPIECE_SPACE, " ").encode()
