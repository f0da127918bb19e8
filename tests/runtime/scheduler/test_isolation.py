"""The real scheduler on a tiny random llama: salts isolate the cache without changing outputs, the
tree's hit counters move on real admissions, and a pin survives the pressure of later requests."""

from __future__ import annotations

from radixrt.runtime.protocol import FlushCache
from tests.runtime.sched_harness import Harness

PROMPT = list(range(2000, 2040))


def finished(h: Harness, ids: list[int], **kw) -> tuple[list[int], object]:
    rid = h.request(ids, max_new_tokens=6, **kw)
    h.run()
    return h.outputs[rid], h.finals[rid]


def test_a_second_salt_gets_no_hit_on_the_same_prompt_and_the_same_salt_does(tiny_model_dir):
    h = Harness(tiny_model_dir, kv_slots=1024)
    first, out_a = finished(h, PROMPT, cache_salt="a")
    again, out_a2 = finished(h, PROMPT, cache_salt="a")
    other, out_b = finished(h, PROMPT, cache_salt="b")
    plain, out_plain = finished(h, PROMPT)
    assert out_a.cached_tokens == 0 and out_a2.cached_tokens == len(PROMPT) - 1
    assert out_b.cached_tokens == 0 and out_plain.cached_tokens == 0
    assert first == again == other == plain  # isolation changes what is reused, never the output
    stats = h.stats()["cache_by_salt"]
    assert sorted(s["cache_hit_tokens"] for s in stats.values()) == [0, 0, len(PROMPT) - 1]
    h.assert_books_balance()


def test_the_scheduler_path_raises_the_hit_counters_eviction_reads(tiny_model_dir):
    h = Harness(tiny_model_dir, kv_slots=1024, eviction_policy="slru")
    finished(h, PROMPT)
    tree = h.sched.cache.tree
    assert tree.hit_tokens == 0
    finished(h, PROMPT[:30] + [7, 8, 9])
    node = tree.root.children[PROMPT[0]]
    assert node.hit_count == 1 and tree.hit_tokens == 30
    finished(h, PROMPT[:30] + [5])
    assert node.hit_count == 2
    h.assert_books_balance()


def test_a_pinned_prompt_stays_cached_under_pressure_until_it_expires(tiny_model_dir):
    h = Harness(tiny_model_dir, kv_slots=200, max_running_requests=4, decode_reserve_ratio=0.0)
    clock = h.sched.cache.pins.clock = _Clock()
    _, out = finished(h, PROMPT, cache_salt="s", pin_s=30)
    assert out.extra["pin"] == {"pinned_tokens": len(PROMPT), "trimmed": False, "expires_in_s": 30.0}
    for i in range(6):  # 6 x 46 tokens through 200 slots: evicts all it can, may retract
        h.request([3000 + 50 * i + k for k in range(40)], max_new_tokens=6)
    h.run()
    assert h.sched.cache.tree.peek_prefix(PROMPT, "s").length == len(PROMPT)
    assert h.stats()["pinned_tokens"] == len(PROMPT)
    h.sched.handle(FlushCache())
    h.drain()
    assert h.last_stats["flushed"] is False and h.last_stats["pinned_tokens"] == len(PROMPT)
    clock.now = 31.0
    h.sched.cache.expire_pins()
    h.sched.handle(FlushCache())
    h.drain()
    assert h.last_stats == {"flushed": True} and h.stats()["pinned_tokens"] == 0
    h.assert_books_balance()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pins_end_early_when_a_waiting_request_cannot_run_otherwise(tiny_model_dir):
    h = Harness(tiny_model_dir, kv_slots=200, decode_reserve_ratio=0.0)
    finished(h, PROMPT, pin_s=30)
    big = [4000 + k for k in range(170)]  # 176 tokens with its output: more than the 160 unpinned slots
    out, final = finished(h, big)
    assert len(out) == 6 and final.finish_reason["type"] == "length"
    assert h.stats()["pins_dropped"] == 1 and h.stats()["pinned_tokens"] == 0
    h.assert_books_balance()


def test_copies_of_a_prompt_under_other_salts_are_not_held_back_for_in_batch_sharing(tiny_model_dir):
    h = Harness(tiny_model_dir, kv_slots=1024)
    same = [h.request(PROMPT, max_new_tokens=2, cache_salt="a") for _ in range(2)]
    other = h.request(PROMPT, max_new_tokens=2, cache_salt="b")
    h.sched.step()
    running = {r.rid for r in h.sched.running}
    assert running == {same[0], other}  # the same salt's copy waits a step to hit the cache; b's does not
    h.run()
    assert [h.finals[r].cached_tokens for r in (*same, other)] == [0, len(PROMPT) - 1, 0]
    h.assert_books_balance()
