"""What spout and bolt tasks share in checkpoints: the barrier actions, where barriers
go, and how a task reports to the coordinator."""

from __future__ import annotations

from typing import Any

from streamflow.inbox import BARRIER, CHECKPOINT_ALERT, CHECKPOINT_DONE
from streamflow.topology import CHECKPOINT_COMPONENT, Topology
from streamflow.transport.base import Transport

PREPARE, COMMIT, ROLLBACK, END = "prepare", "commit", "rollback", "end"
"""Barrier actions; END says that the sending task's input has ended (finite spouts)."""
STARTED, FAILED, DRAINED, FINISHED = "started", "failed", "drained", "finished"
"""Why a task alerts the coordinator: it started (a rollback is due), a tuple failed (a
rollback is due), its finite spout emitted everything and its trees wait for a commit,
or its finite spout is done (the last two make a checkpoint due at once, see
:mod:`streamflow.coordinator`)."""

MAX_FAILED_ROOTS = 1000
"""Root ids of failed tuples an alert carries at most (a flood of failures needs one rollback)."""

BarrierId = tuple[int, int]
"""``(epoch, seq)`` of a prepare or rollback: the coordinator's epoch, then its count."""


def downstream_tasks(topology: Topology, component: str) -> tuple[int, ...]:
    """Every task that subscribes to any stream of ``component``: where its barriers go."""
    layout = topology.task_layout()
    targets = {t for stream in topology.components[component].outputs
               for spec, _ in topology.subscribers(component, stream) for t in layout[spec.name]}
    return tuple(sorted(targets))


def upstream_tasks(topology: Topology, component: str) -> frozenset[int]:
    """Every task of the components ``component`` subscribes to: the inputs to align."""
    layout = topology.task_layout()
    return frozenset(t for sub in topology.components[component].inputs for t in layout[sub.source])


class Party:
    """What spout and bolt tasks share: where their barriers go and how they report."""

    def __init__(self, topology: Topology, component: str, task: int, transport: Transport) -> None:
        self.task = task
        self.transport = transport
        self.downstream = downstream_tasks(topology, component)
        self.coordinator = topology.task_layout()[CHECKPOINT_COMPONENT][0]
        self.initialized = False
        """False until the first rollback (which starts every run) has reached this task."""
        self.generation: BarrierId | None = None
        self._alerted = False

    def started(self) -> None:
        """Tell the coordinator that this task began: after a restart it needs a rollback."""
        self.tell(STARTED)

    def tell(self, reason: str, roots: list[int] | None = None) -> None:
        """Alert the coordinator: ``reason`` (see :data:`STARTED`), this task's generation
        (None until its first rollback) and root ids of failed tuples, if any."""
        payload = (self.task, reason, self.generation, roots or [])
        self.transport.send_control(self.coordinator, CHECKPOINT_ALERT, payload)

    def alert(self, roots: list[int]) -> None:
        """Ask the coordinator for a rollback (a tuple failed), with the generation (the
        rollback this task went through last), so that it can tell an alert about work
        since from one about work a rollback already took back; and the root ids of the
        failed tuples, which it hands to the spouts with the rollback: they tell ``fail``
        which trees really failed (a poison record's retries). Once per generation, but
        for alerts that name roots."""
        if self.initialized and (roots or not self._alerted):
            self._alerted = True
            self.tell(FAILED, roots[:MAX_FAILED_ROOTS])

    def rolled_back(self, bid: BarrierId) -> None:
        """This task went through the rollback ``bid``: its new generation."""
        self.generation, self._alerted = bid, False
        self.initialized = True

    def forward(self, action: str, bid: BarrierId, txid: int, extra: Any) -> None:
        """Send the barrier to every task downstream, behind what this task sent before."""
        payload = (self.task, action, bid[0], bid[1], txid, extra)
        for target in self.downstream:
            self.transport.send_control(target, BARRIER, payload)

    def done(self, bid: BarrierId, ok: bool, info: Any = None) -> None:
        self.transport.send_control(self.coordinator, CHECKPOINT_DONE, (self.task, bid[0], bid[1], ok, info))
