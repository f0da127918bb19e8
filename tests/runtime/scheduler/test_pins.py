"""Pins without a model: a pinned prompt outlives eviction pressure, expires on the clock, is capped
(trimmed, then refused) and is reported by flush; per-salt hit counts are bounded. Books checked."""

from __future__ import annotations

from radixrt.radix_cache.pool import KVPool, ReqToToken
from radixrt.runtime.scheduler.cache_manager import MAX_SALT_LABELS, CacheManager
from tests.runtime.scheduler.cache_helpers import admit_and_prefill, new_req

A = list(range(100, 110))
B = list(range(200, 210))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(capacity: int = 32, fraction: float = 0.5) -> tuple[CacheManager, Clock]:
    pool = KVPool(capacity + 1, num_layers=1, n_kv_heads=1, head_dim=1)
    cache = CacheManager(pool, ReqToToken(8, 64), max_pinned_fraction=fraction)
    clock = cache.pins.clock = Clock()
    return cache, clock


def finish(cache: CacheManager, ids: list[int], salt: str = "", pin_s: float = 0.0, arrival: int = 0):
    """A request that ran and finished (prefill only), then pinned as the scheduler does."""
    req = new_req(ids, arrival, max_new_tokens=0)
    req.salt, req.pin_s = salt, pin_s
    admit_and_prefill(cache, req)
    cache.release(req)
    if pin_s:
        cache.pin(req)
    return req


def cached(cache: CacheManager, ids: list[int], salt: str = "") -> int:
    return cache.tree.peek_prefix(ids, salt).length


def test_a_pinned_prompt_survives_the_pressure_that_evicts_an_unpinned_one():
    cache, _ = make()
    req = finish(cache, A, pin_s=60)
    assert req.pin_report == {"pinned_tokens": 10, "trimmed": False, "expires_in_s": 60.0}
    finish(cache, B)
    taken = cache.alloc(cache.pool.num_free + 10)  # needs every evictable slot
    assert taken is not None
    assert cached(cache, A) == 10 and cached(cache, B) == 0
    assert cache.alloc(1) is None  # the pinned slots are not for the taking
    cache.pool.free(taken)
    cache.check([])


def test_an_expired_pin_unpins_and_its_prompt_becomes_evictable():
    cache, clock = make()
    finish(cache, A, pin_s=5)
    assert cache.pins.tokens() == 10 and cache.tree.size_info().protected == 10
    clock.now = 4.9
    cache.expire_pins()
    assert cache.pins.tokens() == 10
    clock.now = 5.0
    cache.expire_pins()
    assert cache.pins.tokens() == 0 and len(cache.pins) == 0
    assert cache.tree.size_info() == (10, 0, 10)
    assert cache.tree.evict(10) == 10
    cache.check([])


def test_pins_past_the_cap_are_trimmed_then_refused_and_repinning_extends():
    cache, clock = make(capacity=32, fraction=0.25)  # at most 8 pinned tokens
    first = finish(cache, A, pin_s=10)
    assert first.pin_report == {"pinned_tokens": 8, "trimmed": True, "expires_in_s": 10.0}
    assert cache.pins.tokens() == 8 and cached(cache, A) == 10
    other = finish(cache, B, pin_s=10, arrival=1)
    assert other.pin_report["pinned_tokens"] == 0 and "cap" in other.pin_report["refused"]
    clock.now = 8.0
    again = finish(cache, A, pin_s=10, arrival=2)  # the same prompt again: nothing new to hold
    assert again.pin_report == {"pinned_tokens": 8, "trimmed": True, "expires_in_s": 10.0}
    clock.now = 12.0  # past the first expiry, before the second
    cache.expire_pins()
    assert cache.pins.tokens() == 8 and cache.pins.capped == 3
    cache.check([])


def test_a_pin_holds_its_own_salt_only():
    cache, _ = make()
    finish(cache, A, salt="a", pin_s=60)
    finish(cache, A, salt="b", arrival=1)
    assert cache.tree.evict(100) == 10
    assert cached(cache, A, "a") == 10 and cached(cache, A, "b") == 0
    cache.check([])


def test_flush_reports_what_pins_and_running_requests_keep():
    cache, clock = make()
    finish(cache, A, pin_s=60)
    finish(cache, B, arrival=1)
    running = new_req([300, 301, 302, 303], arrival=2)
    admit_and_prefill(cache, running)
    cache.cache_prefix(running)  # its prompt is in the tree, locked by it
    assert cache.flush() == {"flushed": False, "freed_tokens": 10, "pinned_tokens": 10, "locked_tokens": 4}
    cache.check([running])
    cache.release(running)
    clock.now = 61.0
    assert cache.flush() == {"flushed": True}
    assert cache.pool.num_free == cache.pool.capacity
    cache.check([])


def test_a_disabled_cache_refuses_pins():
    pool = KVPool(33, num_layers=1, n_kv_heads=1, head_dim=1)
    cache = CacheManager(pool, ReqToToken(8, 64), disable_radix_cache=True)
    req = finish(cache, A, pin_s=5)
    assert req.pin_report["pinned_tokens"] == 0 and "disabled" in req.pin_report["refused"]


def test_hits_are_counted_per_salt_under_short_hashes_and_a_bounded_number_of_labels():
    cache, _ = make(capacity=4096)
    for i in range(MAX_SALT_LABELS + 5):
        for arrival in range(2):
            finish(cache, A, salt=f"tenant-{i}", arrival=arrival)
    stats = cache.salt_stats()
    assert len(stats) == MAX_SALT_LABELS and "other" in stats
    assert all(len(label) == 8 and "tenant" not in label for label in stats if label != "other")
    assert sum(s["prompt_tokens"] for s in stats.values()) == cache.prompt_tokens == (MAX_SALT_LABELS + 5) * 20
    assert sum(s["cache_hit_tokens"] for s in stats.values()) == cache.hit_tokens
    first = next(iter(stats.values()))
    assert first == {"cache_hit_tokens": 9, "prompt_tokens": 20}  # the second request hit all but the last token
    cache.check([])
