"""Drive a CacheManager the way admission and the forward step do, with no model."""

from __future__ import annotations

from radixrt.radix_cache.pool import KVPool, ReqToToken
from radixrt.runtime.protocol import SamplingParams
from radixrt.runtime.scheduler.cache_manager import CacheManager
from radixrt.runtime.scheduler.req import Req


def make_cache(capacity: int = 64, rows: int = 8, disabled: bool = False) -> CacheManager:
    pool = KVPool(capacity + 1, num_layers=1, n_kv_heads=1, head_dim=1)
    return CacheManager(pool, ReqToToken(rows, 64), disable_radix_cache=disabled)


def new_req(ids: list[int], arrival: int = 0, max_new_tokens: int = 4) -> Req:
    return Req(f"r{arrival}", list(ids), SamplingParams(max_new_tokens=max_new_tokens), arrival)


def admit_and_prefill(cache: CacheManager, req: Req) -> None:
    """Admission's fit check and admit, then the forward step's advance over the uncached tokens."""
    prefix = cache.peek(req)
    n = req.known - prefix.length
    assert cache.available_after_borrow(prefix) >= n, "the test pool is too small"
    cache.admit(req, n)
    req.computed += n


def decode(cache: CacheManager, req: Req, sampled: int) -> None:
    """Append a sampled token and compute it, as the next decode step would."""
    req.output_ids.append(sampled)
    slots = cache.alloc(1)
    assert slots is not None
    cache.append(req, slots)
    req.computed += 1


def cached_sequence(cache: CacheManager, ids: list[int], arrival: int = 1000) -> None:
    """Leave `ids` in the tree the way a finished prefill-only request does."""
    req = new_req(ids, arrival, max_new_tokens=0)
    admit_and_prefill(cache, req)
    cache.release(req)
