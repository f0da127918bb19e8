"""The real scheduler on a tiny random llama: outputs, cache reuse, memory pressure, policies."""

from __future__ import annotations

import random
import re

import pytest

from radixrt.runtime.protocol import TokenizedRequest
from tests.runtime.sched_harness import Harness

PREFIX = list(range(1000, 1100))  # a 100-token "system prompt"


def prompts(n: int, length: int = 12, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 40000) for _ in range(length)] for _ in range(n)]


@pytest.fixture(scope="module")
def baseline(tiny_model_dir):
    """Greedy outputs of each prompt run alone with a big pool and the cache off."""
    h = Harness(tiny_model_dir, disable_radix_cache=True)
    out = {}
    for p in prompts(6) + [PREFIX + q for q in prompts(4, seed=1)]:
        rid = h.request(p, max_new_tokens=10)
        h.run()
        out[tuple(p)] = h.outputs[rid]
    return out


def run_all(h: Harness, ps: list[list[int]], max_new_tokens: int = 10) -> dict[tuple, list[int]]:
    rids = {h.request(p, max_new_tokens=max_new_tokens): tuple(p) for p in ps}
    h.run()
    return {p: h.outputs[rid] for rid, p in rids.items()}


def test_batched_outputs_equal_outputs_alone(tiny_model_dir, baseline):
    h = Harness(tiny_model_dir)
    got = run_all(h, [list(p) for p in baseline])
    assert got == baseline
    h.assert_books_balance()


def test_small_pool_retracts_and_still_gives_the_same_outputs(tiny_model_dir, baseline):
    ps = [list(p) for p in baseline][:6]
    h = Harness(
        tiny_model_dir, kv_slots=60, max_running_requests=8, decode_reserve_ratio=0.0
    )  # 6 x 22 tokens > 60 slots
    got = run_all(h, ps)
    assert got == {tuple(p): baseline[tuple(p)] for p in ps}
    assert h.stats()["retracted"] > 0
    assert all(0 <= o.cached_tokens <= o.prompt_tokens for o in h.finals.values())
    h.assert_books_balance()
    assert h.stats()["kv_slots_in_use"] == 0


def test_chunked_prefill_gives_the_same_outputs(tiny_model_dir, baseline):
    ps = [list(p) for p in baseline if len(p) > 100]
    h = Harness(tiny_model_dir, chunked_prefill_size=16)
    assert run_all(h, ps) == {tuple(p): baseline[tuple(p)] for p in ps}
    h.assert_books_balance()


def test_warm_cache_hits_and_gives_the_same_outputs_as_cold(tiny_model_dir, baseline):
    ps = [list(p) for p in baseline if len(p) > 100]
    h = Harness(tiny_model_dir)
    run_all(h, ps)
    rids = [h.request(p, max_new_tokens=10) for p in ps]
    h.run()
    for rid, p in zip(rids, ps):
        assert h.outputs[rid] == baseline[tuple(p)]
        assert h.finals[rid].cached_tokens == len(p) - 1  # all but the recomputed last token
    assert h.sched.cache.flush()
    rids = [h.request(p, max_new_tokens=10) for p in ps]
    h.run()
    assert [h.outputs[r] for r in rids] == [baseline[tuple(p)] for p in ps]
    assert h.finals[rids[0]].cached_tokens == 0


def test_shared_system_prompt_reaches_the_optimal_hit_rate(tiny_model_dir):
    questions = prompts(16, length=20, seed=3)
    ps = [PREFIX + q for q in questions]
    h = Harness(tiny_model_dir)
    got = run_all(h, ps, max_new_tokens=4)
    cached = sum(out.cached_tokens for out in h.finals.values())
    optimal = len(PREFIX) * (len(ps) - 1)
    assert cached >= 0.95 * optimal
    assert all(o.cached_tokens <= o.prompt_tokens for o in h.finals.values())
    off = Harness(tiny_model_dir, disable_radix_cache=True)
    assert run_all(off, ps, max_new_tokens=4) == got
    assert sum(o.cached_tokens for o in off.finals.values()) == 0
    off.assert_books_balance()


def test_same_prompt_requests_share_one_prefill(tiny_model_dir):
    h = Harness(tiny_model_dir)
    p = PREFIX + [5, 6, 7]
    rids = [h.request(p, max_new_tokens=3) for _ in range(4)]
    h.run()
    cached = sorted(h.finals[r].cached_tokens for r in rids)
    assert cached == [0] + [len(p) - 1] * 3
    assert len({tuple(h.outputs[r]) for r in rids}) == 1
    # one path in the tree: the prompt + the 2 computed tokens of the identical greedy outputs
    assert h.stats()["kv_slots_cached"] == len(p) + 2


def test_fork_siblings_sharing_a_few_uncached_tokens_compute_them_once(tiny_model_dir):
    h = Harness(tiny_model_dir)
    h.request(PREFIX, max_new_tokens=0)  # the fork's commit of the parent
    h.run()
    instruction = [11, 12, 13, 14, 15, 16]  # e.g. a role marker and "Attempt", then the branch number
    rids = [h.request(PREFIX + instruction + [20 + i], max_new_tokens=2) for i in range(3)]
    h.run()
    cached = sorted(h.finals[r].cached_tokens for r in rids)
    assert cached == [len(PREFIX)] + [len(PREFIX) + len(instruction)] * 2


def test_prefill_only_request_leaves_the_prompt_cached(tiny_model_dir):
    h = Harness(tiny_model_dir)
    rid = h.request(PREFIX, max_new_tokens=0)
    h.run()
    assert h.outputs[rid] == [] and h.finals[rid].finish_reason["type"] == "length"
    rid2 = h.request(PREFIX + [9, 9], max_new_tokens=2)
    h.run()
    assert h.finals[rid2].cached_tokens == len(PREFIX)


def test_lpm_admits_the_longest_prefix_match_first(tiny_model_dir):
    h = Harness(tiny_model_dir, max_running_requests=1)
    h.request(PREFIX, max_new_tokens=0)
    h.run()
    cold = h.request(prompts(1, length=100, seed=9)[0], max_new_tokens=1, rid="cold")
    warm = h.request(PREFIX + [11, 12], max_new_tokens=1, rid="warm")
    h.run()
    assert list(h.finals)[-2:] == [warm, cold]  # one running at a time: finish order is admission order


def test_fcfs_admits_in_arrival_order(tiny_model_dir):
    h = Harness(tiny_model_dir, max_running_requests=1, schedule_policy="fcfs")
    h.request(PREFIX, max_new_tokens=0)
    h.run()
    cold = h.request(prompts(1, length=100, seed=9)[0], max_new_tokens=1, rid="cold-f")
    warm = h.request(PREFIX + [11, 12], max_new_tokens=1, rid="warm-f")
    h.run()
    assert list(h.finals)[-2:] == [cold, warm]


@pytest.mark.parametrize("policy", ["lpm", "dfs-weight"])
def test_a_request_sharing_nothing_is_not_starved(tiny_model_dir, policy):
    bound = 5
    h = Harness(tiny_model_dir, max_running_requests=1, max_wait_passes=bound, schedule_policy=policy)
    h.request(PREFIX, max_new_tokens=0)
    h.run()
    loner = h.request(prompts(1, length=30, seed=4)[0], max_new_tokens=1, rid=f"loner-{policy}")
    passes = 0
    while loner not in h.finals:
        h.request(PREFIX + [passes + 3], max_new_tokens=1)  # a stream of cache hits
        h.sched.step()
        h.drain()
        passes += 1
        assert passes <= bound + 2, "the non-sharing request starved"
    h.run()
    h.assert_books_balance()


def test_abort_of_waiting_and_running_requests_leaks_nothing(tiny_model_dir):
    from radixrt.runtime.protocol import Abort

    h = Harness(tiny_model_dir, max_running_requests=1)
    running = h.request(prompts(1, seed=5)[0], max_new_tokens=50)
    waiting = h.request(prompts(1, seed=6)[0], max_new_tokens=50)
    h.sched.step()
    h.sched.step()
    h.sched.handle(Abort(rid=running))
    h.sched.handle(Abort(rid=waiting))
    h.run()
    assert h.finals[running].finish_reason["type"] == "abort"
    assert h.finals[waiting].finish_reason["type"] == "abort"
    assert h.stats()["kv_slots_in_use"] == 0
    h.assert_books_balance()


def test_request_larger_than_the_pool_fails_at_once_and_others_run(tiny_model_dir):
    h = Harness(tiny_model_dir, kv_slots=64)
    big = h.request(list(range(10, 80)), max_new_tokens=4)
    ok = h.request([5, 6, 7], max_new_tokens=4)
    h.run()
    assert h.errors[big].status == 400 and "exceeds the KV cache" in h.errors[big].message
    assert len(h.outputs[ok]) == 4
    h.assert_books_balance()


def test_stop_token_ids_min_new_tokens_and_ignore_eos(tiny_model_dir):
    h = Harness(tiny_model_dir)
    p = prompts(1, seed=7)[0]
    free = h.request(p, max_new_tokens=8, ignore_eos=True)
    h.run()
    first = h.outputs[free][0]
    stopped = h.request(p, max_new_tokens=8, stop_token_ids=[first])
    at_least = h.request(p, max_new_tokens=8, stop_token_ids=[first], min_new_tokens=3)
    h.run()
    assert h.outputs[stopped] == [first] and h.finals[stopped].finish_reason == {"type": "stop", "matched": first}
    assert len(h.outputs[at_least]) >= 3 and first not in h.outputs[at_least][:3]
    assert h.finals[free].finish_reason["type"] == "length"


def test_duplicate_rid_is_rejected(tiny_model_dir):
    h = Harness(tiny_model_dir)
    h.request([5, 6], max_new_tokens=4, rid="dup")
    h.sched.handle(TokenizedRequest(rid="dup", input_ids=[1, 2]))
    h.run()
    assert h.errors["dup"].status == 400


def test_cache_hits_count_once_per_admission_not_per_ordering_pass(tiny_model_dir):
    h = Harness(tiny_model_dir, max_running_requests=1)  # the others wait, ordered every step
    h.request(PREFIX, max_new_tokens=0)
    h.run()
    hits_before = h.stats()["cache_hit_tokens"]
    rids = [h.request(PREFIX + [3 + i], max_new_tokens=3) for i in range(6)]
    h.run()
    assert all(h.finals[r].cached_tokens == len(PREFIX) for r in rids)
    assert h.stats()["cache_hit_tokens"] - hits_before == 6 * len(PREFIX)
    prefix = h.sched.cache.tree.peek_prefix(PREFIX)
    assert prefix.length == len(PREFIX) and prefix.node.hit_count == 6


def test_jump_forward_in_the_loop_keeps_the_books_balanced(tiny_model_dir):
    h = Harness(tiny_model_dir)
    regex = "(yes|no), and the rest is forced text: (red|blue)"
    rid = h.request(PREFIX, max_new_tokens=40, regex=regex)
    h.run()  # checks the books after every step
    text = h.sched.outputs.tokenizer.decode(h.outputs[rid])
    assert re.fullmatch(regex, text), text
    assert h.finals[rid].extra["jump_forward_tokens"] > 0
    assert h.stats()["kv_slots_in_use"] == 0
