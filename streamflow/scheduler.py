"""Where a topology's tasks run: the even scheduler, as pure functions on plain data.

A *slot* is one worker port of one supervisor, ``(supervisor id, port)``. Nimbus calls
:func:`schedule` with what it read from ZooKeeper and writes the result back; nothing here
does I/O, so every case is testable on its own.
"""

from __future__ import annotations

from collections import Counter
from typing import Collection, Mapping, Sequence

Slot = tuple[str, int]
Assignment = dict[Slot, list[int]]


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


def deal(tasks: Sequence[int], slots: Sequence[Slot]) -> Assignment:
    """Deal tasks round robin over slots (Storm's even scheduler): every worker gets a
    share of every component."""
    assignment: Assignment = {slot: [] for slot in slots}
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
) -> Assignment:
    """Assign ``tasks`` to ``workers`` slots.

    ``free`` holds the slots no topology uses, per supervisor; ``current`` the topology's
    assignment so far and ``alive`` which of its slots still run. If the tasks and worker
    count are unchanged, only the tasks of dead slots move (to free slots, else onto the
    surviving workers), so a failure restarts as few workers as possible. Otherwise (a new
    topology, a rebalance) the tasks are dealt afresh over the surviving and free slots.
    Runs on fewer workers than asked when slots are short; an empty result means none.
    """
    now: Assignment = {slot: list(ts) for slot, ts in (current or {}).items()}
    survivors: Assignment = {slot: ts for slot, ts in now.items() if slot in alive}
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
