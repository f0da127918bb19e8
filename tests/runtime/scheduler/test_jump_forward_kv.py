"""Jump-forward's KV side: the computed tokens it rewrites are freed by the cache manager."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from radixrt.runtime.config import ServerArgs
from radixrt.runtime.scheduler.cache_manager import CacheManager
from radixrt.runtime.scheduler.grammar_manager import GrammarManager
from radixrt.runtime.scheduler.req import Req
from tests.runtime.scheduler.cache_helpers import admit_and_prefill, decode, make_cache, new_req

REGEX = "[aé]-forced tail"
E_FIRST_BYTE, E_SECOND_BYTE = 142, 119  # the tokenizer's byte tokens for "é" (0xC3 0xA9)


class RecordingCache(CacheManager):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.uncomputed: list[tuple[str, int]] = []

    def uncompute(self, req: Req, n: int) -> None:
        self.uncomputed.append((req.rid, n))
        super().uncompute(req, n)


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir) -> Tokenizer:
    return Tokenizer.from_file(str(embedded_model_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def grammars(embedded_model_dir, tokenizer) -> GrammarManager:
    return GrammarManager(str(embedded_model_dir), tokenizer, [2, 0], 49152 + 64, ServerArgs())


def recording_cache() -> RecordingCache:
    plain = make_cache()
    return RecordingCache(plain.pool, plain.table)


def e_split_in_two_tokens(cache: CacheManager, grammars: GrammarManager, take_back_prompt: bool) -> Req:
    """A running constrained request that sampled "é" as its two byte tokens; the second was just
    sampled (not computed), so jump-forward's retokenization ("é" is one token) rewrites both."""
    req = new_req([5, 6, 7], max_new_tokens=16)
    req.matcher = grammars.compiler.submit("regex", REGEX).result().new_matcher()
    admit_and_prefill(cache, req)
    decode(cache, req, E_FIRST_BYTE)
    if take_back_prompt:
        cache.cache_prefix(req)  # now the first byte's KV is shared through the tree
    req.output_ids.append(E_SECOND_BYTE)
    assert req.matcher.accept_token(E_FIRST_BYTE) and req.matcher.accept_token(E_SECOND_BYTE)
    return req


def test_jump_forward_frees_the_rewritten_tokens_through_the_cache_manager(grammars, tokenizer):
    cache = recording_cache()
    req = e_split_in_two_tokens(cache, grammars, take_back_prompt=False)
    free = cache.pool.num_free
    grammars.jump_forward(req, cache)
    assert cache.uncomputed == [(req.rid, 1)]  # the first byte's KV; the second was never computed
    assert req.output_ids == tokenizer.encode("é-forced tail", add_special_tokens=False).ids
    assert req.computed == req.prompt_len and cache.pool.num_free == free + 1
    cache.check([req])
    slots = cache.alloc(req.pending)  # the next step computes the forced tokens
    cache.append(req, slots)
    req.computed = req.known
    cache.release(req)
    cache.check([])
    assert cache.tree.size_info().total == req.known


def test_jump_forward_leaves_shared_tokens_and_the_matcher_as_they_were(grammars):
    cache = recording_cache()
    req = e_split_in_two_tokens(cache, grammars, take_back_prompt=True)
    output, state = list(req.output_ids), req.matcher.state
    grammars.jump_forward(req, cache)
    assert cache.uncomputed == [] and req.output_ids == output and req.matcher.state == state
    cache.check([req])
