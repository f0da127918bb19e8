"""The model's vocabulary as raw bytes per token id, and the outlines-core `Vocabulary` built from it.

Loaded once per model: memoised in memory and, given a cache folder, stored on disk.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import outlines_core

from radixrt.constrained.token_bytes import token_bytes_table

_FORMAT = b"radixrt-vocab-1"
# Grammars are compiled as `(?:R)\x00`: the byte NUL marks the end of R and is spelled only by the
# primary EOS id. See grammar.py for why (outlines-core loses continuations out of final states).
END_SENTINEL = b"\x00"
# NOTE: a memo of a pure function of the tokenizer file's content, so one table per model per process.
_MEMO: dict[str, TokenTable] = {}
_MEMO_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class TokenTable:
    """Raw bytes of every ordinary token; EOS, special and added tokens have none.

    `vocab_size` is the model's (logit) vocabulary, which may exceed the tokenizer's.
    """

    token_bytes: dict[int, bytes]
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    hash: str

    def __post_init__(self):
        assert self.eos_token_ids, "a vocabulary needs at least one EOS id"
        assert all(t < self.vocab_size for t in self.token_bytes), "token id beyond vocab_size"

    @property
    def end_token_id(self) -> int:
        """The token that spells END_SENTINEL in the outlines-core vocabulary: the primary EOS."""
        return self.eos_token_ids[0]

    @cached_property
    def vocabulary(self) -> outlines_core.Vocabulary:
        """The outlines-core vocabulary (built on first use).

        Ordinary tokens keep their bytes, except that tokens containing NUL are left out so only the
        end token spells END_SENTINEL. outlines-core's own EOS slot gets an id no token uses.
        """
        by_bytes: dict[bytes, list[int]] = {END_SENTINEL: [self.end_token_id]}
        for token_id, raw in self.token_bytes.items():
            if END_SENTINEL not in raw:
                by_bytes.setdefault(raw, []).append(token_id)
        return outlines_core.Vocabulary(self._unused_token_id(), by_bytes)

    def _unused_token_id(self) -> int:
        used = set(self.token_bytes) | set(self.eos_token_ids)
        return next((i for i in range(self.vocab_size) if i not in used), self.vocab_size)

    def decode(self, token_ids: list[int]) -> bytes:
        """The raw bytes of `token_ids`; tokens without bytes (EOS, specials) contribute nothing."""
        return b"".join(self.token_bytes.get(t, b"") for t in token_ids)

    def to_bytes(self) -> bytes:
        parts = [_FORMAT, struct.pack("<II", self.vocab_size, len(self.eos_token_ids))]
        parts.append(struct.pack(f"<{len(self.eos_token_ids)}I", *self.eos_token_ids))
        for token_id, raw in sorted(self.token_bytes.items()):
            parts.append(struct.pack("<II", token_id, len(raw)) + raw)
        return b"".join(parts)

    @staticmethod
    def from_bytes(data: bytes) -> TokenTable:
        if not data.startswith(_FORMAT):
            raise ValueError("not a radixrt vocabulary file")
        pos = len(_FORMAT)
        vocab_size, num_eos = struct.unpack_from("<II", data, pos)
        eos = struct.unpack_from(f"<{num_eos}I", data, pos + 8)
        pos += 8 + 4 * num_eos
        table = {}
        while pos < len(data):
            token_id, length = struct.unpack_from("<II", data, pos)
            table[token_id] = data[pos + 8 : pos + 8 + length]
            pos += 8 + length
        return _make_table(table, eos, vocab_size)


def _make_table(token_bytes: dict[int, bytes], eos_token_ids, vocab_size: int) -> TokenTable:
    digest = hashlib.sha256(struct.pack("<I", vocab_size) + repr(tuple(eos_token_ids)).encode())
    for token_id, raw in sorted(token_bytes.items()):
        digest.update(struct.pack("<II", token_id, len(raw)) + raw)
    return TokenTable(token_bytes, tuple(eos_token_ids), vocab_size, digest.hexdigest()[:32])


def load_token_table(
    tokenizer: str | Path,
    eos_token_ids: list[int],
    vocab_size: int,
    cache_dir: Path | None = None,
) -> TokenTable:
    """The token table of a tokenizer folder (or its tokenizer.json), memoised and optionally disk-cached."""
    path = Path(tokenizer)
    if path.is_dir():
        path = path / "tokenizer.json"
    content = path.read_bytes()
    key = hashlib.sha256(content + repr((tuple(eos_token_ids), vocab_size)).encode()).hexdigest()[:32]
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    table = _read_cached(cache_dir, key) or _build_table(content, eos_token_ids, vocab_size)
    if cache_dir is not None:
        _write_cached(cache_dir, key, table)
    with _MEMO_LOCK:
        return _MEMO.setdefault(key, table)


def build_vocabulary(
    tokenizer: str | Path,
    eos_token_ids: list[int],
    vocab_size: int,
    cache_dir: Path | None = None,
) -> tuple[outlines_core.Vocabulary, str]:
    """(outlines-core Vocabulary, vocabulary hash) for a tokenizer folder or tokenizer.json path."""
    table = load_token_table(tokenizer, eos_token_ids, vocab_size, cache_dir)
    return table.vocabulary, table.hash


def _build_table(content: bytes, eos_token_ids: list[int], vocab_size: int) -> TokenTable:
    tokenizer_json = json.loads(content)
    table = token_bytes_table(tokenizer_json, set(eos_token_ids))
    if not table:
        raise ValueError("the tokenizer has no ordinary tokens")
    too_big = max(table) + 1
    if too_big > vocab_size:
        raise ValueError(f"tokenizer has token id {too_big - 1} but the model's vocab_size is {vocab_size}")
    return _make_table(table, eos_token_ids, vocab_size)


def _read_cached(cache_dir: Path | None, key: str) -> TokenTable | None:
    if cache_dir is None:
        return None
    try:
        return TokenTable.from_bytes((cache_dir / f"vocab-{key}.bin").read_bytes())
    except (OSError, ValueError, struct.error):
        return None


def _write_cached(cache_dir: Path, key: str, table: TokenTable) -> None:
    target = cache_dir / f"vocab-{key}.bin"
    if target.exists():
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{threading.get_ident()}")
    tmp.write_bytes(table.to_bytes())
    tmp.replace(target)
