"""Token bytes from tokenizer.json: byte-level BPE on the embedded model, sentencepiece on a small
hand-written tokenizer, exclusions, and the memory and disk caches."""

from __future__ import annotations

import json

import pytest

from radixrt.constrained import build_vocabulary, load_token_table
from radixrt.constrained.token_bytes import gpt2_byte_alphabet, token_bytes_table
from radixrt.constrained.vocabulary import END_SENTINEL, TokenTable
from tests.constrained.helpers import EOS_IDS, MODEL_VOCAB


@pytest.fixture(scope="module")
def table(model_dir) -> TokenTable:
    return load_token_table(model_dir, EOS_IDS, MODEL_VOCAB)


def test_gpt2_alphabet_covers_every_byte_once():
    alphabet = gpt2_byte_alphabet()
    assert sorted(alphabet.values()) == list(range(256))
    assert alphabet["Ġ"] == ord(" ") and alphabet["Ċ"] == ord("\n") and alphabet["a"] == ord("a")


def test_byte_level_tokens_map_to_the_bytes_the_tokenizer_decodes(table, tokenizer):
    for text in ['{"', '":', " ", "\n", "name", " the", "日本", "é"]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert table.decode(ids) == text.encode()
    checked = 0
    for token_id, raw in table.token_bytes.items():
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            continue  # a token holding part of a character; covered by the round trips above
        assert tokenizer.decode([token_id]) == text, token_id
        checked += 1
    assert checked > 40_000


def test_eos_special_and_added_tokens_have_no_bytes(table, tokenizer, model_dir):
    added = {t["id"] for t in json.loads((model_dir / "tokenizer.json").read_text())["added_tokens"]}
    assert added >= {0, 1, 2} and not added & set(table.token_bytes)
    assert len(table.token_bytes) == tokenizer.get_vocab_size() - len(added)


def test_outlines_vocabulary_spells_the_end_sentinel_only_with_the_primary_eos(table, model_dir):
    vocabulary, vocab_hash = build_vocabulary(model_dir, EOS_IDS, MODEL_VOCAB)
    assert vocabulary.get(END_SENTINEL) == [EOS_IDS[0]]
    nul_tokens = [t for t, raw in table.token_bytes.items() if END_SENTINEL in raw]
    assert nul_tokens, "the byte-level vocabulary has a token for NUL"
    assert vocabulary.get(b" the") == [table_id(table, b" the")]
    assert vocab_hash == table.hash and len(vocab_hash) == 32


def table_id(table: TokenTable, raw: bytes) -> int:
    return next(t for t, b in table.token_bytes.items() if b == raw)


def test_sentencepiece_tokens_map_spaces_and_byte_fallback():
    tokenizer_json = {
        "model": {"type": "BPE", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "▁hello": 3, "<0x0A>": 4, "é": 5, "▁": 6}},
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace"}, {"type": "ByteFallback"}]},
        "added_tokens": [{"id": 0, "content": "<unk>"}, {"id": 1, "content": "<s>"}],
    }
    assert token_bytes_table(tokenizer_json, excluded_ids={2}) == {3: b" hello", 4: b"\n", 5: "é".encode(), 6: b" "}


def test_unigram_vocabulary_is_read_from_its_list():
    tokenizer_json = {"model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["▁a", -1.0], ["b", -2.0]]}}
    assert token_bytes_table(tokenizer_json, excluded_ids={0}) == {1: b" a", 2: b"b"}


def test_table_is_memoised_and_round_trips_through_the_disk_cache(model_dir, tmp_path, table):
    assert load_token_table(model_dir, EOS_IDS, MODEL_VOCAB) is table
    load_token_table(model_dir / "tokenizer.json", [2], MODEL_VOCAB, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("vocab-*.bin")
    restored = TokenTable.from_bytes(cached.read_bytes())
    assert restored.eos_token_ids == (2,) and restored.vocab_size == MODEL_VOCAB
    assert restored.token_bytes == table.token_bytes and restored.hash != table.hash  # other EOS ids


def test_model_vocab_smaller_than_the_tokenizer_is_rejected(model_dir):
    with pytest.raises(ValueError, match="vocab_size"):
        load_token_table(model_dir, EOS_IDS, 1000)
