"""Constrained decoding: grammars (regex, JSON schema, choices, dtype) compiled with outlines-core.

    compiler = GrammarCompiler(tokenizer_dir, eos_token_ids=[...], vocab_size=V, cache_dir=...)
    grammar = compiler.submit(*sampling_params.grammar_key).result()   # a Future; InvalidRequest on bad input
    matcher = grammar.new_matcher()                                     # one per request
    bitmask = allocate_token_bitmask(batch_size, V)
    matcher.fill_bitmask(bitmask, row); apply_token_bitmask_(logits, bitmask)
    matcher.accept_token(sampled_id)

This package imports no other radixrt package except radixrt.errors.
"""

from radixrt.constrained.bitmask import allocate_token_bitmask, apply_token_bitmask_
from radixrt.constrained.compiler import GrammarCompiler
from radixrt.constrained.grammar import CompiledGrammar
from radixrt.constrained.jump_forward import jump_forward_tokens
from radixrt.constrained.matcher import GrammarMatcher
from radixrt.constrained.sources import (
    COMPACT_WHITESPACE,
    REGEX_BOOL,
    REGEX_FLOAT,
    REGEX_INT,
    REGEX_STR,
    SPACED_WHITESPACE,
    GrammarSource,
    check_json_schema,
    to_regex,
)
from radixrt.constrained.vocabulary import (
    TokenTable,
    build_vocabulary,
    load_token_table,
)

__all__ = [
    "COMPACT_WHITESPACE",
    "REGEX_BOOL",
    "REGEX_FLOAT",
    "REGEX_INT",
    "REGEX_STR",
    "SPACED_WHITESPACE",
    "CompiledGrammar",
    "GrammarCompiler",
    "GrammarMatcher",
    "GrammarSource",
    "TokenTable",
    "allocate_token_bitmask",
    "apply_token_bitmask_",
    "build_vocabulary",
    "check_json_schema",
    "jump_forward_tokens",
    "load_token_table",
    "to_regex",
]
