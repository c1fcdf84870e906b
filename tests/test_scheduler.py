"""The even scheduler, as pure functions."""

from __future__ import annotations

from collections import Counter

from streamflow.scheduler import deal, pick_slots, schedule

TASKS = list(range(1, 12))
FREE = {"a": [7000, 7001], "b": [7000, 7001]}


def test_new_topology_spreads_workers_over_supervisors_and_every_task_once() -> None:
    assignment = schedule(TASKS, 4, FREE)
    assert len(assignment) == 4
    assert Counter(sup for sup, _ in assignment) == {"a": 2, "b": 2}
    assert sorted(t for ts in assignment.values() for t in ts) == TASKS
    sizes = [len(ts) for ts in assignment.values()]
    assert max(sizes) - min(sizes) <= 1


def test_two_workers_take_one_slot_on_each_supervisor() -> None:
    assert sorted(sup for sup, _ in schedule(TASKS, 2, FREE)) == ["a", "b"]


def test_fewer_slots_than_workers_runs_on_what_there_is() -> None:
    assignment = schedule(TASKS, 6, FREE)
    assert len(assignment) == 4 and sorted(t for ts in assignment.values() for t in ts) == TASKS
    assert schedule(TASKS, 2, {}) == {}


def test_unchanged_topology_keeps_its_assignment() -> None:
    current = schedule(TASKS, 4, FREE)
    assert schedule(TASKS, 4, {}, current, alive=list(current)) == current


def test_a_dead_slot_moves_only_its_tasks_to_a_free_slot() -> None:
    current = schedule(TASKS, 2, FREE)
    dead = next(iter(current))
    free = {"a": [7001], "b": [7001]}
    new = schedule(TASKS, 2, free, current, alive=[s for s in current if s != dead])
    survivor = next(s for s in current if s != dead)
    assert new[survivor] == current[survivor]  # untouched: that worker is not restarted
    moved = next(s for s in new if s != survivor)
    assert moved != dead and sorted(new[moved]) == sorted(current[dead])
    assert moved[0] == dead[0]  # the supervisor with fewer of this topology's workers


def test_with_no_free_slot_the_survivors_take_the_orphans() -> None:
    current = schedule(TASKS, 4, FREE)
    alive = [s for s in current if s[0] == "b"]
    new = schedule(TASKS, 4, {}, current, alive)
    assert set(new) == set(alive)
    assert sorted(t for ts in new.values() for t in ts) == TASKS


def test_rebalance_to_more_workers_keeps_old_slots_and_adds_free_ones() -> None:
    current = schedule(TASKS, 2, FREE)
    free = {sup: [p for p in ports if (sup, p) not in current] for sup, ports in FREE.items()}
    new = schedule(TASKS, 4, free, current, alive=list(current))
    assert set(current) <= set(new) and len(new) == 4
    assert sorted(t for ts in new.values() for t in ts) == TASKS


def test_rebalance_to_fewer_workers() -> None:
    current = schedule(TASKS, 4, FREE)
    new = schedule(TASKS + [12, 13], 2, {}, current, alive=list(current))
    assert len(new) == 2 and sorted(t for ts in new.values() for t in ts) == TASKS + [12, 13]


def test_pick_slots_balances_and_deal_is_round_robin() -> None:
    picked = pick_slots({"a": [1, 2, 3], "b": [1]}, 3, Counter({"b": 0}))
    assert Counter(s for s, _ in picked) == {"a": 2, "b": 1}
    assert deal([1, 2, 3, 4, 5], [("a", 1), ("b", 1)]) == {("a", 1): [1, 3, 5], ("b", 1): [2, 4]}
