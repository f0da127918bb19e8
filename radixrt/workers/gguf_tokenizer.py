"""Rebuild a byte-level BPE `tokenizer.json` (and its config) from a GGUF file's metadata.

A GGUF carries the vocabulary, merges, token types and special ids under llama.cpp's key names,
plus `tokenizer.ggml.pre`, the name of the rule that splits text before BPE. We turn those back into
a `tokenizers.Tokenizer` that encodes like llama.cpp and the original HF tokenizer.
"""

from __future__ import annotations

from typing import Any

from gguf import TokenType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_PRES = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3"}
SUPPORTED_PRES = sorted({"default", "gpt2", "smollm", "qwen2", "deepseek-r1-qwen"} | _LLAMA3_PRES)


def build_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """A `tokenizers.Tokenizer` equivalent to the GGUF's byte-level BPE tokenizer."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer {kind!r} is not supported; only byte-level BPE ('gpt2') is")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in SUPPORTED_PRES:
        raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported; supported: {', '.join(SUPPORTED_PRES)}")
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    bpe = models.BPE(
        vocab={tok: i for i, tok in enumerate(tokens)},
        merges=merges,
        fuse_unk=False,
        byte_fallback=False,
        # llama.cpp takes a whole pre-token from the vocab before merging for llama3-style vocabularies.
        ignore_merges=pre in _LLAMA3_PRES,
    )
    tokenizer = Tokenizer(bpe)
    if pre in {"qwen2", "deepseek-r1-qwen"}:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = _post_processor(meta, tokens)
    _add_special_tokens(tokenizer, tokens, types)
    return tokenizer


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    """The split rule llama.cpp applies for `pre`, followed by the byte-level alphabet mapping."""
    if pre in _LLAMA3_PRES or pre in {"qwen2", "deepseek-r1-qwen"}:
        split = _LLAMA3_SPLIT if pre in _LLAMA3_PRES else _QWEN2_SPLIT
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
            ]
        )
    # GPT-2's own regex lives inside ByteLevel(use_regex=True).
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre == "smollm":
        # SmolLM's vocabulary was trained on single digits: split every digit out first.
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def _post_processor(meta: dict[str, Any], tokens: list[str]) -> processors.PostProcessor:
    """Adds BOS/EOS when the GGUF asks for it; otherwise only fixes byte-level offsets."""
    bos = _special(meta, tokens, "bos") if meta.get("tokenizer.ggml.add_bos_token") else None
    eos = _special(meta, tokens, "eos") if meta.get("tokenizer.ggml.add_eos_token") else None
    if bos is None and eos is None:
        return processors.ByteLevel(trim_offsets=False)
    specials = [(t, tokens.index(t)) for t in (bos, eos) if t is not None]
    head, tail = [bos] if bos else [], [eos] if eos else []
    second = [f"{t}:1" for t in head] + ["$B:1"] + [f"{t}:1" for t in tail]
    return processors.TemplateProcessing(
        single=" ".join(head + ["$A"] + tail), pair=" ".join(head + ["$A"] + tail + second), special_tokens=specials
    )


def _add_special_tokens(tokenizer: Tokenizer, tokens: list[str], types: list[int]) -> None:
    """Control/unknown tokens become special added tokens, user-defined ones plain added tokens,
    so that both are matched whole in text instead of being cut into pieces."""
    special = {int(TokenType.CONTROL), int(TokenType.UNKNOWN)}
    control = [tok for tok, kind in zip(tokens, types) if kind in special]
    user = [tok for tok, kind in zip(tokens, types) if kind == TokenType.USER_DEFINED]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])


def _special(meta: dict[str, Any], tokens: list[str], role: str) -> str | None:
    """The token GGUF names for `role` (bos, eos, padding, unknown), if any."""
    token_id = meta.get(f"tokenizer.ggml.{role}_token_id")
    return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None


def tokenizer_config(meta: dict[str, Any], context_length: int) -> dict[str, Any]:
    """`tokenizer_config.json`: special tokens, BOS/EOS flags, chat template, max length."""
    tokens = meta["tokenizer.ggml.tokens"]
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": context_length,
    }
    for name, role in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        token = _special(meta, tokens, role)
        if token is not None:
            config[f"{name}_token"] = token
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config
