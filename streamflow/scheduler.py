"""Where a topology's tasks run: the even scheduler, as pure functions on plain data.

A *slot* is one worker port of one supervisor, ``(supervisor id, port)``. The leader's
scheduling pass (:mod:`streamflow.leader`) reads ZooKeeper, asks :func:`live_slots` which
of a topology's workers still run, :func:`schedule` where its tasks go and
:func:`build_assignment` for the record to write back; nothing here does I/O, so every
case is testable on its own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

from streamflow.records import Assignment, Slot, WorkerAssignment

Placement = dict[Slot, list[int]]
"""Slot -> the tasks it runs."""


def pick_slots(free: Mapping[str, Sequence[int]], count: int, used: Counter[str]) -> list[Slot]:
    """Take up to ``count`` free slots, each time from the supervisor this topology uses
    least (``used`` counts its workers per supervisor), so workers spread evenly."""
    remaining = {sup: sorted(ports) for sup, ports in free.items() if ports}
    used = Counter(used)
    picked: list[Slot] = []
    while len(picked) < count and remaining:
        sup = min(remaining, key=lambda s: (used[s], -len(remaining[s]), s))
        picked.append((sup, remaining[sup].pop(0)))
        used[sup] += 1
        if not remaining[sup]:
            del remaining[sup]
    return picked


def deal(tasks: Sequence[int], slots: Sequence[Slot]) -> Placement:
    """Deal tasks round robin over slots (Storm's even scheduler): every worker gets a
    share of every component."""
    assignment: Placement = {slot: [] for slot in slots}
    ordered = sorted(slots)
    for i, task in enumerate(sorted(tasks)):
        assignment[ordered[i % len(ordered)]].append(task)
    return {slot: tasks for slot, tasks in assignment.items() if tasks}


def schedule(
    tasks: Sequence[int],
    workers: int,
    free: Mapping[str, Sequence[int]],
    current: Mapping[Slot, Sequence[int]] | None = None,
    alive: Collection[Slot] = (),
) -> Placement:
    """Assign ``tasks`` to ``workers`` slots.

    ``free`` holds the slots no topology uses, per supervisor; ``current`` the topology's
    assignment so far and ``alive`` which of its slots still run. If the tasks and worker
    count are unchanged, only the tasks of dead slots move (to free slots, else onto the
    surviving workers), so a failure restarts as few workers as possible. Otherwise (a new
    topology, a rebalance) the tasks are dealt afresh over the surviving and free slots.
    Runs on fewer workers than asked when slots are short; an empty result means none.
    """
    now: Placement = {slot: list(ts) for slot, ts in (current or {}).items()}
    survivors: Placement = {slot: ts for slot, ts in now.items() if slot in alive}
    same_shape = (
        len(now) == workers
        and sorted(t for ts in now.values() for t in ts) == sorted(tasks)
    )
    if same_shape:
        orphaned = [t for slot, ts in now.items() if slot not in survivors for t in ts]
        if not orphaned:
            return survivors
        lost = len(now) - len(survivors)
        used = Counter(sup for sup, _ in survivors)
        new_slots = pick_slots(free, lost, used)
        if new_slots:
            survivors.update(deal(orphaned, new_slots))
            return survivors
        if survivors:  # no free slot: the survivors take the orphans
            for slot, extra in deal(orphaned, list(survivors)).items():
                survivors[slot].extend(extra)
            return survivors
        return {}
    keep = sorted(survivors)[:workers]
    used = Counter(sup for sup, _ in keep)
    spare = {sup: list(ports) for sup, ports in free.items()}
    for sup, port in sorted(survivors)[workers:]:  # slots released by a shrinking rebalance
        spare.setdefault(sup, []).append(port)
    slots = keep + pick_slots(spare, workers - len(keep), used)
    return deal(tasks, slots) if slots else {}


@dataclass(frozen=True)
class Timeouts:
    """How long a worker may go without a heartbeat before its tasks move (``worker``),
    and how long a newly started one has to send its first (``launch``)."""

    worker: float
    launch: float


BeatMemory = dict[tuple[str, float], float]
"""The time of the last heartbeat seen from each slot, keyed by slot key and the time the
slot got its tasks (``WorkerAssignment.since``)."""


def live_slots(
    assignment: Assignment,
    beats: Mapping[str, float],
    remembered: BeatMemory,
    supervisors: Collection[str],
    now: float,
    timeouts: Timeouts,
) -> tuple[set[Slot], BeatMemory]:
    """The slots of ``assignment`` whose worker still runs, and the heartbeat times to
    remember for the next pass.

    ``beats`` holds the time of each slot's heartbeat node (by slot key). A worker whose
    ZooKeeper session ended has no node, so the time last seen (``remembered``) stands
    for it: it counts as silent since then, not as launching. A slot runs while its
    supervisor is registered and its last beat is under ``timeouts.worker`` old, or,
    before any beat, while it got its tasks under ``timeouts.launch`` ago.
    """
    alive: set[Slot] = set()
    seen: BeatMemory = {}
    for key, worker in assignment.workers.items():
        last = beats.get(key, remembered.get((key, worker.since)))
        if last is not None:
            seen[(key, worker.since)] = last
        fresh = last is not None and now - last < timeouts.worker
        launching = last is None and now - worker.since < timeouts.launch
        if worker.supervisor in supervisors and (fresh or launching):
            alive.add(worker.slot)
    return alive, seen


def free_slots(offered: Mapping[str, Sequence[int]], taken: Mapping[str, Collection[int]]) -> dict[str, list[int]]:
    """Per supervisor, the ports it offers that no topology's worker holds."""
    return {sup: [p for p in ports if p not in taken.get(sup, ())] for sup, ports in offered.items()}


def build_assignment(
    placement: Mapping[Slot, Sequence[int]],
    previous: Assignment | None,
    hosts: Mapping[str, str],
    now: float,
) -> Assignment:
    """The assignment record of ``placement``, one version past ``previous``. A slot that
    keeps exactly its tasks keeps its ``since`` (its worker is not restarted, so it is not
    launching again); any other starts at ``now``. ``hosts`` gives each supervisor's
    address."""
    old = previous.workers if previous is not None else {}
    workers = {}
    for (sup, port), tasks in sorted(placement.items()):
        worker = WorkerAssignment(sup, hosts[sup], port, tuple(sorted(tasks)), now)
        kept = old.get(worker.key)
        if kept is not None and kept.tasks == worker.tasks:
            worker = WorkerAssignment(sup, worker.host, port, worker.tasks, kept.since)
        workers[worker.key] = worker
    return Assignment((previous.version if previous is not None else 0) + 1, workers)
