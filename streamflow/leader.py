"""The leader's scheduling pass: read the cluster, compute each topology's assignment,
write back what changed.

Only the nimbus that holds the leader lock runs it (every :data:`SCHEDULE_SECS`, and at
once after a submission or a rebalance). The decisions are the pure functions of
:mod:`streamflow.scheduler`; this module reads their input from ZooKeeper and writes
their output. Each topology is scheduled on its own: one whose record or heartbeats
cannot be read is logged and the others are scheduled all the same.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from prometheus_client import Counter

from streamflow.records import Assignment, TopologyRecord
from streamflow.scheduler import BeatMemory, Timeouts, build_assignment, free_slots, live_slots, schedule
from streamflow.zkstate import ClusterState

log = logging.getLogger(__name__)

SCHEDULE_SECS = 0.5
CODE_GRACE_SECS = 1.0
"""Seconds between removing a killed topology's assignment and its code: supervisors
stop its workers on the assignment's removal, and a worker starting meanwhile still
finds its code."""

Taken = dict[str, set[int]]
"""Per supervisor, the ports some topology's worker holds."""


class SchedulingPass:
    """Brings every topology's assignment in line with live supervisors and workers;
    ``reassignments`` counts the assignments changed for a running topology."""

    def __init__(self, state: ClusterState, timeouts: Timeouts, reassignments: Counter) -> None:
        self.state = state
        self.timeouts = timeouts
        self.reassignments = reassignments
        self._beats: dict[str, BeatMemory] = {}
        """Per topology, the last heartbeat seen from each slot (:func:`live_slots`)."""

    def run(self) -> None:
        """One pass over every topology."""
        supervisors = self.state.supervisors()
        assignments = self.state.assignments()
        taken: Taken = {}
        for assignment in assignments.values():
            for worker in assignment.workers.values():
                taken.setdefault(worker.supervisor, set()).add(worker.port)
        for topology_id, record in self.state.topologies().items():
            try:
                if record.status == "killed":
                    self._remove_killed(record, assignments.get(topology_id))
                else:
                    self._schedule(record, supervisors, assignments.get(topology_id), taken)
            except Exception:
                log.exception("nimbus: scheduling %s failed; the other topologies are scheduled", topology_id)

    def _schedule(self, record: TopologyRecord, supervisors: Mapping[str, dict[str, Any]],
                  previous: Assignment | None, taken: Taken) -> None:
        now = time.time()
        current = previous.slots() if previous is not None else {}
        beats = self._beat_times(record.id) if current else {}
        alive, self._beats[record.id] = live_slots(
            previous or Assignment(0, {}), beats, self._beats.get(record.id, {}), supervisors.keys(), now,
            self.timeouts)
        free = free_slots({sid: info["ports"] for sid, info in supervisors.items()}, taken)
        tasks = [t for ts in record.task_layout().values() for t in ts]
        placement = schedule(tasks, record.workers, free, current, alive)
        if placement == current:
            return
        for sup, port in current:  # this topology's old slots are free unless kept below
            taken.get(sup, set()).discard(port)
        hosts = {sid: info["host"] for sid, info in supervisors.items()}
        assignment = build_assignment(placement, previous, hosts, now)
        for worker in assignment.workers.values():
            taken.setdefault(worker.supervisor, set()).add(worker.port)
        if previous is not None:
            self.reassignments.labels(record.name).inc()
        self.state.write_assignment(record.id, assignment)
        log.info("nimbus: assigned %s (version %d) to %s", record.id, assignment.version,
                 sorted(assignment.workers))

    def _beat_times(self, topology_id: str) -> dict[str, float]:
        """The time of each slot's heartbeat, by slot key (a beat without one counts as none)."""
        times = {}
        for key, beat in self.state.heartbeats(topology_id).items():
            when = beat.get("time")
            if isinstance(when, (int, float)):
                times[key] = float(when)
        return times

    def _remove_killed(self, record: TopologyRecord, assignment: Assignment | None) -> None:
        """A killed topology past its wait: its assignment goes first (supervisors stop
        its workers), its code and records :data:`CODE_GRACE_SECS` later. Each step is
        done again on the next pass if it failed."""
        now = time.time()
        if now < (record.remove_at or 0.0):
            return
        if assignment is not None or record.unassigned_at is None:
            if assignment is not None:
                self.state.delete_assignment(record.id)
            record.unassigned_at = now
            self.state.write_topology(record)
        elif now >= record.unassigned_at + CODE_GRACE_SECS:
            self.state.delete_topology(record.id)
            self._beats.pop(record.id, None)
            log.info("nimbus: removed %s", record.id)
