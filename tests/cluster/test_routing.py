"""The routing policy without Ray: prefix affinity, the load fallback, program affinity, faults."""

from __future__ import annotations

import pytest

from radixrt.cluster.routing import ReplicaView, RouteKey, RouteTable, RoutingConfig, imbalanced


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def table(**config) -> tuple[RouteTable, Clock]:
    clock = Clock()
    return RouteTable(RoutingConfig(**config), clock=clock), clock


PREFIX = (11, 12, 13, 14)


def test_the_replica_holding_the_longest_prefix_wins():
    t, _ = table()
    views = [ReplicaView("a", 0, frozenset(PREFIX[:1])), ReplicaView("b", 5, frozenset(PREFIX[:3]))]
    choice = t.choose(RouteKey(blocks=PREFIX), views)
    assert (choice.replica, choice.reason, choice.matched_blocks) == ("b", "prefix", 3)


def test_equal_prefixes_go_to_the_less_loaded_replica():
    t, _ = table()
    views = [ReplicaView("a", 3, frozenset(PREFIX)), ReplicaView("b", 1, frozenset(PREFIX))]
    assert t.choose(RouteKey(blocks=PREFIX), views).replica == "b"


def test_a_prefix_nobody_holds_goes_to_the_least_loaded_and_ties_rotate():
    t, _ = table()
    busy = [ReplicaView("a", 4), ReplicaView("b", 2)]
    assert t.choose(RouteKey(blocks=(1, 2)), busy) == t.choose(RouteKey(blocks=(3, 4)), busy)
    idle = [ReplicaView("a", 0), ReplicaView("b", 0)]
    picked = {t.choose(RouteKey(blocks=(k,)), idle).replica for k in range(5, 9)}
    assert picked == {"a", "b"}


def test_a_just_routed_prefix_follows_its_first_request_until_the_ttl():
    t, clock = table(pending_ttl_s=5.0)
    views = [ReplicaView("a", 0), ReplicaView("b", 0)]
    first = t.choose(RouteKey(blocks=PREFIX), views).replica
    other_views = [ReplicaView(v.replica, 1 if v.replica == first else 0) for v in views]  # first one busier
    again = t.choose(RouteKey(blocks=PREFIX[:2] + (77,)), other_views)
    assert (again.replica, again.reason, again.matched_blocks) == (first, "prefix", 2)
    clock.now += 6.0  # not published by then: the replica evicted it or never admitted it
    assert t.choose(RouteKey(blocks=PREFIX), other_views).reason == "least_loaded"


def test_imbalanced_queues_fall_back_to_the_least_loaded():
    t, _ = table(balance_abs_threshold=8, balance_rel_threshold=1.5)
    holder = ReplicaView("a", 20, frozenset(PREFIX))
    assert t.choose(RouteKey(blocks=PREFIX), [holder, ReplicaView("b", 2)]).replica == "b"
    # within the absolute threshold the prefix wins (a fresh table: the first choice sent PREFIX to b)
    t, _ = table(balance_abs_threshold=8, balance_rel_threshold=1.5)
    views = [ReplicaView("a", 9, frozenset(PREFIX)), ReplicaView("b", 2)]
    assert t.choose(RouteKey(blocks=PREFIX), views).replica == "a"


def test_both_thresholds_must_be_exceeded():
    cfg = RoutingConfig(balance_abs_threshold=10, balance_rel_threshold=1.5)
    assert not imbalanced([100, 80], cfg)  # 20 apart, but 100 < 1.5 * 80
    assert imbalanced([100, 60], cfg)
    assert not imbalanced([12, 0], RoutingConfig(balance_abs_threshold=12))
    assert not imbalanced([50], cfg)


def test_a_program_stays_on_its_replica_while_it_is_a_candidate():
    t, _ = table(balance_abs_threshold=0)
    views = [ReplicaView("a", 0), ReplicaView("b", 0)]
    home = t.choose(RouteKey(blocks=(1,), program="p"), views).replica
    elsewhere = "b" if home == "a" else "a"
    loaded = [ReplicaView(home, 50), ReplicaView(elsewhere, 0, frozenset(PREFIX))]
    choice = t.choose(RouteKey(blocks=PREFIX, program="p"), loaded)
    assert (choice.replica, choice.reason) == (home, "program")
    # the home replica is gone: the program moves, and stays where it moved
    moved = t.choose(RouteKey(blocks=PREFIX, program="p"), [ReplicaView(elsewhere, 0)])
    assert moved.replica == elsewhere
    assert t.choose(RouteKey(program="p"), [ReplicaView(home, 0), ReplicaView(elsewhere, 9)]).replica == elsewhere


def test_program_table_is_bounded():
    t, _ = table(max_programs=2)
    views = [ReplicaView("a", 0)]
    for p in ("p1", "p2", "p3"):
        t.choose(RouteKey(program=p), views)
    assert list(t._programs) == ["p2", "p3"]


def test_failed_replicas_are_avoided_unless_none_is_left():
    t, _ = table()
    views = [ReplicaView("a", 0, frozenset(PREFIX)), ReplicaView("b", 9)]
    assert t.choose(RouteKey(blocks=PREFIX, avoid=("a",)), views).replica == "b"
    assert t.choose(RouteKey(blocks=PREFIX, avoid=("a", "b")), views).replica == "a"


def test_a_target_is_honoured_and_a_missing_one_routes_normally():
    t, _ = table()
    views = [ReplicaView("a", 0), ReplicaView("b", 0, frozenset(PREFIX))]
    assert t.choose(RouteKey(target="a"), views).reason == "target"
    assert t.choose(RouteKey(blocks=PREFIX, target="gone"), views).replica == "b"


def test_round_robin_ignores_prefixes():
    t, _ = table(policy="round_robin")
    views = [ReplicaView("a", 0, frozenset(PREFIX)), ReplicaView("b", 0)]
    assert [t.choose(RouteKey(blocks=PREFIX), views).replica for _ in range(4)] == ["a", "b", "a", "b"]


@pytest.mark.parametrize(
    "bad",
    [{"policy": "random"}, {"balance_rel_threshold": 0.5}, {"balance_abs_threshold": -1}, {"block_tokens": 0}],
)
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        RoutingConfig(**bad)


def test_no_replica_is_an_error():
    with pytest.raises(ValueError, match="no replica"):
        RouteTable().choose(RouteKey(), [])


def test_without_ray_the_message_names_the_extra(monkeypatch):
    import sys

    from radixrt.cluster import require_ray

    monkeypatch.setitem(sys.modules, "ray.serve", None)  # what an absent package looks like to import
    with pytest.raises(RuntimeError, match=r"pip install 'radixrt\[cluster\]'"):
        require_ray()
