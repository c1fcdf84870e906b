"""A spout task's part in checkpoints (the protocol: :mod:`streamflow.checkpoint`)."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from streamflow.acking import PendingTrees
from streamflow.checkpoint.party import COMMIT, DRAINED, END, FINISHED, PREPARE, ROLLBACK, BarrierId, Party
from streamflow.collector import SpoutOutputCollector
from streamflow.components import SpoutBase
from streamflow.state.store import CheckpointId
from streamflow.stats import TaskStats
from streamflow.topology import Topology
from streamflow.transport.base import Transport


class SpoutCheckpoints(Party):
    """A spout task's part: seals its emitted trees per checkpoint, acks them at commit,
    turns failed trees into a request for rollback, and rolls back."""

    def __init__(self, topology: Topology, component: str, task: int, transport: Transport,
                 spout: SpoutBase, pending: PendingTrees, collector: SpoutOutputCollector,
                 stats: TaskStats, callback: Callable[[Any, Any], None]) -> None:
        super().__init__(topology, component, task, transport)
        self._spout, self._pending, self._collector, self._stats = spout, pending, collector, stats
        collector.failed_roots = []
        self._callback = callback
        self.floor = 0.0
        """No tree emitted after the last barrier has an emit time below this."""
        self._sealed: list[tuple[CheckpointId, float]] = []
        """Prepared checkpoints not committed yet: their id and the emit time cut."""
        self._failed: set[int] = set()
        """Roots of trees in flight that failed or timed out: ``fail`` gets them at rollback."""
        self._drain_told = False
        """Whether the coordinator was told that the spout drained, since the last commit
        or rollback (before the commit, the trees it told of wait for that one)."""

    def handle(self, payload: tuple[str, int, int, int, Any]) -> None:
        """A message from the coordinator: prepare, commit or rollback."""
        action, epoch, seq, txid, extra = payload
        bid = (epoch, seq)
        if action == PREPARE:
            self._prepare(bid, txid)
        elif action == COMMIT:
            self._commit(tuple(extra))  # type: ignore[arg-type]
        elif action == ROLLBACK:
            self._rollback(bid, txid, extra)

    def _prepare(self, bid: BarrierId, txid: int) -> None:
        if not self.initialized:
            self.done(bid, False, "spout task not started yet")
            return
        try:
            position = self._spout.position()
        except Exception as exc:
            self._stats.record_error(exc, "position")
            self.done(bid, False, f"position() raised {type(exc).__name__}: {exc}")
            return
        cut = self.floor = math.nextafter(self._collector.now, math.inf)
        self._sealed.append(((bid[0], txid), cut))
        self.forward(PREPARE, bid, txid, None)
        self.done(bid, True, None if position is None else dict(position))

    def _commit(self, committed: CheckpointId) -> None:
        """Ack every tree emitted before the barrier of ``committed`` (and earlier ones),
        but those that failed: they wait for the rollback their failure asked for."""
        now, latency = time.monotonic(), self._stats.complete_latency
        while self._sealed and self._sealed[0][0] <= committed:
            _, cut = self._sealed.pop(0)
            for msg_id, emitted in self._pending.take_before(cut, keep=self._failed):
                self._stats.acked += 1
                latency.add(now - emitted)
                self._callback(self._spout.ack, msg_id)
        if self._failed:
            self._failed = {root for root in self._failed if root in self._pending}
        self._drain_told = False  # trees emitted since its barrier wait for the next checkpoint

    def _rollback(self, bid: BarrierId, txid: int, extra: Any) -> None:
        upto, positions, failed = extra
        self._failed.update(failed)  # failed at bolts, their news not here through the ackers yet
        try:
            position = self._spout.position()
        except Exception as exc:
            self._stats.record_error(exc, "position")
            position = None
        for root, msg_id in self._pending.take_all():  # each will be replayed: a failed tree
            if root not in self._failed:
                self._stats.failed += 1
            self._collector.failed_ids.add(msg_id)
            if position is None or root in self._failed:
                self._callback(self._spout.fail, msg_id)
        if position is not None:
            self._callback(self._spout.seek, positions or {})
        self._sealed.clear()
        self._failed.clear()
        self._drain_told = False
        self.rolled_back(bid)
        self.forward(ROLLBACK, bid, txid, (upto, None))
        self.done(bid, True)

    def drained(self) -> None:
        """The finite spout has nothing more to emit, and its trees wait for a commit: ask
        the coordinator for a checkpoint now rather than at its interval (once per
        commit). It takes one once every spout task drained or is done: the end of a
        finite input completes within a checkpoint round, not up to an interval later."""
        if self.initialized and not self._drain_told:
            self._drain_told = True
            self.tell(DRAINED)

    def ended(self) -> None:
        """The spout is exhausted and done: tell the tasks downstream (their windows fire),
        and the coordinator (it need not wait for this task to drain)."""
        if self.initialized:
            self.forward(END, self.generation or (0, 0), 0, None)
            self.tell(FINISHED)

    def tree_failed(self, root: int) -> bool:
        """A tree failed: note it for the rollback it asks for. False if not in flight."""
        if root not in self._pending:
            return False
        self._failed.add(root)
        self._stats.failed += 1
        self.alert([])
        return True

    def check_failures(self) -> None:
        """Fail the trees whose tuples the last flush could not send (a value the worker
        link cannot encode)."""
        roots, self._collector.failed_roots = self._collector.failed_roots, []
        for root in roots or ():
            self.tree_failed(root)

    def timed_out(self, cutoff: float) -> None:
        """Trees emitted before ``cutoff`` are overdue: they stay in flight, failed, until
        the rollback they ask for."""
        overdue = self._pending.emitted_before(cutoff)
        if overdue:
            self._failed.update(overdue)
            self.alert([])
