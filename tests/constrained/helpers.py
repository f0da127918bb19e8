"""Helpers for the constrained-decoding tests: tokenizing, reading bitmasks, random walks."""

from __future__ import annotations

import random

import numpy as np
from tokenizers import Tokenizer

from radixrt.constrained import (
    GrammarMatcher,
    allocate_token_bitmask,
    jump_forward_tokens,
)

# <|im_end|> (the model's EOS) first, then <|endoftext|>: two EOS ids exercise the multi-EOS paths.
EOS_IDS = [2, 0]
# The model's logit vocabulary is padded beyond the tokenizer's 49152 ids; those ids must stay masked.
MODEL_VOCAB = 49152 + 64


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def allowed_ids(matcher: GrammarMatcher, vocab_size: int = MODEL_VOCAB) -> np.ndarray:
    """The token ids the matcher's bitmask row allows, read back bit by bit."""
    bitmask = allocate_token_bitmask(1, vocab_size)
    matcher.fill_bitmask(bitmask, 0)
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")[:vocab_size]
    return np.flatnonzero(bits)


def random_walk(
    matcher: GrammarMatcher, rng: random.Random, *, tokenizer: Tokenizer | None = None, max_steps: int = 400
) -> list[int]:
    """Sample allowed tokens until the matcher terminates; where EOS is allowed, end with probability 1/2.

    With a tokenizer, jump-forward is applied whenever the grammar forces text. Returns the output
    ids without the terminating EOS.
    """
    output: list[int] = []
    for _ in range(max_steps):
        if matcher.is_terminated():
            return output
        if tokenizer is not None and (jump := jump_forward_tokens(matcher, tokenizer, output)):
            k, new_ids = jump
            output = output[: len(output) - k] + new_ids
            continue
        allowed = allowed_ids(matcher)
        eos = [t for t in allowed if t in EOS_IDS]
        token = int(eos[0]) if eos and rng.random() < 0.5 else int(rng.choice([t for t in allowed if t not in EOS_IDS]))
        assert matcher.accept_token(token), f"the mask allowed {token} but the matcher refused it"
        if token in EOS_IDS:
            return output
        output.append(token)
    raise AssertionError(f"no end after {max_steps} steps: {output}")
