"""The even scheduler, as pure functions."""

from __future__ import annotations

from collections import Counter

from streamflow.records import Assignment, WorkerAssignment
from streamflow.scheduler import (
    Timeouts,
    build_assignment,
    deal,
    free_slots,
    live_slots,
    pick_slots,
    schedule,
)

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


TIMEOUTS = Timeouts(worker=30.0, launch=120.0)
NOW = 1000.0


def assignment_of(*workers: WorkerAssignment) -> Assignment:
    return Assignment(1, {w.key: w for w in workers})


def test_a_worker_with_a_fresh_heartbeat_on_a_registered_supervisor_is_alive() -> None:
    a = assignment_of(WorkerAssignment("a", "h", 7000, (1,), since=NOW - 500),
                      WorkerAssignment("b", "h", 7000, (2,), since=NOW - 500))
    alive, seen = live_slots(a, {"a:7000": NOW - 1, "b:7000": NOW - 31}, {}, {"a", "b"}, NOW, TIMEOUTS)
    assert alive == {("a", 7000)}
    assert seen == {("a:7000", NOW - 500): NOW - 1, ("b:7000", NOW - 500): NOW - 31}


def test_a_worker_on_a_supervisor_gone_is_dead_however_fresh_its_beat() -> None:
    a = assignment_of(WorkerAssignment("a", "h", 7000, (1,), since=NOW))
    assert live_slots(a, {"a:7000": NOW}, {}, set(), NOW, TIMEOUTS)[0] == set()


def test_a_worker_without_a_beat_yet_is_launching_until_the_launch_timeout() -> None:
    launching = assignment_of(WorkerAssignment("a", "h", 7000, (1,), since=NOW - 100))
    late = assignment_of(WorkerAssignment("a", "h", 7000, (1,), since=NOW - 121))
    assert live_slots(launching, {}, {}, {"a"}, NOW, TIMEOUTS)[0] == {("a", 7000)}
    assert live_slots(late, {}, {}, {"a"}, NOW, TIMEOUTS)[0] == set()


def test_a_worker_whose_heartbeat_node_went_counts_as_silent_since_its_last_beat() -> None:
    """Its session ended: no node, but a beat seen before, so it is not launching."""
    a = assignment_of(WorkerAssignment("a", "h", 7000, (1,), since=NOW - 10))
    remembered = {("a:7000", NOW - 10): NOW - 40}
    alive, seen = live_slots(a, {}, remembered, {"a"}, NOW, TIMEOUTS)
    assert alive == set() and seen == remembered
    restarted = {("a:7000", NOW - 500): NOW - 40}  # a beat of the slot's earlier tasks does not count
    assert live_slots(a, {}, restarted, {"a"}, NOW, TIMEOUTS)[0] == {("a", 7000)}


def test_free_slots_leaves_out_the_ports_taken() -> None:
    assert free_slots({"a": [7000, 7001], "b": [7000]}, {"a": {7001}}) == {"a": [7000], "b": [7000]}


def test_build_assignment_keeps_since_of_slots_whose_tasks_stay_and_bumps_the_version() -> None:
    previous = assignment_of(WorkerAssignment("a", "ha", 7000, (1, 3), since=5.0),
                             WorkerAssignment("b", "hb", 7000, (2,), since=5.0))
    new = build_assignment({("a", 7000): [3, 1], ("b", 7001): [2]}, previous, {"a": "ha", "b": "hb"}, NOW)
    assert new.version == 2
    assert new.workers["a:7000"] == WorkerAssignment("a", "ha", 7000, (1, 3), since=5.0)
    assert new.workers["b:7001"] == WorkerAssignment("b", "hb", 7001, (2,), since=NOW)
    assert build_assignment({("a", 7000): [1]}, None, {"a": "ha"}, NOW).version == 1
