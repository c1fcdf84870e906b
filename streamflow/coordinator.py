"""The checkpoint coordinator: the one task that starts, commits and rolls back
checkpoints (Storm's checkpoint spout), in topologies with a stateful bolt.

It runs rounds, one at a time. A round sends a prepare or a rollback to every spout task
and waits until every spout and bolt task reported its part done (the barrier reached
all of them, see :mod:`streamflow.checkpoint`). A prepare round that completes commits
the checkpoint: one atomic write of the record (txid, time, the spouts' positions) to
the state provider, then a commit message to spouts and stateful bolts.

- The first round of every coordinator is a rollback to the last committed checkpoint:
  it gives every task its state (and the spouts their positions). A coordinator begins a
  new epoch first, which fences off the writes of one that is going away.
- A failed tree, a task that (re)started, or a round that does not complete within
  ``topology.message.timeout.secs`` leads to a rollback.
- Checkpoints start every ``topology.state.checkpoint.interval.ms`` (from one start to
  the next, as Storm's checkpoint spout times them, one at a time), or sooner once every
  spout task said that its finite spout emitted all it had (``exhausted()``), some with
  trees waiting for a commit and the others done: the end of a finite input then
  completes at once, not up to an interval later. A spout that never ends (a Kafka topic
  read on) never says so.
- A prepare that a task could not do (its store is unreachable) is not a failure of
  the data: the checkpoint is dropped and the next one, an interval after that, saves the
  changes of both. Nothing is acked meanwhile, so spouts stop at max-spout-pending
  until the store answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Mapping, TypeVar

from streamflow.checkpoint import COMMIT, DRAINED, FAILED, FINISHED, PREPARE, ROLLBACK, STARTED
from streamflow.executor import Executor
from streamflow.inbox import CHECKPOINT, CHECKPOINT_ALERT, CHECKPOINT_DONE, Inbox, Message
from streamflow.state.store import CheckpointId, Fenced, StateProvider
from streamflow.topology import CHECKPOINT_COMPONENT, Topology
from streamflow.transport.base import Transport

log = logging.getLogger(__name__)

T = TypeVar("T")

START_GRACE = 2.0
"""Seconds the first round waits for every task to say it started (their first messages)."""

RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0)
"""Pauses between attempts at the provider while it fails, and between failed rollbacks."""


class _Abort(Exception):
    """The round cannot complete: the next must be a rollback."""


class CheckpointCoordinator(Executor):
    """Drives checkpoints of one topology; see the module docstring."""

    kind = "checkpoint"

    def __init__(self, topology: Topology, task: int, inbox: Inbox, transport: Transport,
                 provider: StateProvider) -> None:
        super().__init__(CHECKPOINT_COMPONENT, task, inbox)
        layout = topology.task_layout()
        self._transport = transport
        self._provider = provider
        self._component_of = {t: spec.name for spec in topology.components.values() for t in layout[spec.name]}
        self._spouts = [t for spec in topology.spouts for t in layout[spec.name]]
        self._committers = self._spouts + [t for spec in topology.bolts if spec.is_stateful
                                           for t in layout[spec.name]]
        self._interval = topology.config["topology.state.checkpoint.interval.ms"] / 1000
        self._timeout = float(topology.config["topology.message.timeout.secs"])
        self.epoch = 0
        self._seq = 0
        self._txid = 0
        self._committed: CheckpointId | None = None
        self._positions: dict[str, dict[str, Any]] = {}
        self._generation: tuple[int, int] | None = None
        """The last rollback that completed: failures from before it are old news."""
        self._rolling_back: tuple[int, int] | None = None
        """The rollback round under way: failures of work since it are news."""
        self._rollback_wanted = True
        self._failed_roots: set[int] = set()
        """Roots of tuples that failed since the last rollback, for the spouts' ``fail``."""
        self._started: set[int] = set()
        self._drained: set[int] = set()
        """Spout tasks that said, since the last checkpoint began, that their spout emitted
        everything it had, with trees waiting for a commit."""
        self._finished: set[int] = set()
        """Spout tasks whose spout is done (since the last rollback began). Once every
        spout task drained or is done, and one drained, a checkpoint is due at once."""
        self.committed_txid = 0
        self.committed_time = 0.0
        self.checkpoint_seconds = 0.0
        self.rollbacks = 0
        self.failures = 0
        self.last_problem = ""

    def metrics(self) -> Mapping[str, Any]:
        return {"checkpoint.committed_txid": self.committed_txid,
                "checkpoint.committed_time": self.committed_time,
                "checkpoint.seconds": self.checkpoint_seconds,
                "checkpoint.rollbacks": self.rollbacks,
                "checkpoint.failures": self.failures}

    async def run(self) -> None:
        self.epoch = await self._retrying(self._provider.begin_epoch)
        record = await self._retrying(self._provider.read_checkpoint)
        if record is not None:
            self._committed = (int(record["epoch"]), int(record["txid"]))
            self._txid = self._committed[1]
            self._positions = dict(record.get("positions") or {})
            self.committed_txid, self.committed_time = self._txid, float(record.get("time", 0.0))
        await self._await_tasks(time.monotonic() + START_GRACE)
        failed_rollbacks = 0
        next_at = time.monotonic() + self._interval
        while True:
            if self._rollback_wanted:
                if await self._rollback():
                    failed_rollbacks = 0
                    next_at = time.monotonic() + self._interval
                else:
                    await asyncio.sleep(RETRY_DELAYS[min(failed_rollbacks, len(RETRY_DELAYS) - 1)])
                    failed_rollbacks += 1
                continue
            # The interval runs from one checkpoint's start to the next, as Storm's
            # checkpoint spout times it: a checkpoint's own duration (0.1-0.5 s on 2 busy
            # workers) does not stretch the time the trees in flight wait for a commit.
            await self._pause(next_at - time.monotonic())
            if not self._rollback_wanted:
                started = time.monotonic()
                committed = await self._checkpoint()
                next_at = (started if committed else time.monotonic()) + self._interval

    async def _rollback(self) -> bool:
        """A rollback round to the last committed checkpoint; True once every task is in it."""
        self._rollback_wanted = False
        self._drained.clear()
        self._finished.clear()  # a spout done may replay now
        upto = list(self._committed) if self._committed is not None else None
        failed = sorted(self._failed_roots)
        extras = {t: (upto, self._positions.get(self._component_of[t], {}), failed) for t in self._spouts}
        bid = self._rolling_back = self._next_barrier()
        try:
            await self._round(ROLLBACK, bid, self._txid, extras)
        except _Abort as exc:
            self._problem(f"rollback to checkpoint {self._txid} did not complete: {exc}")
            self._rollback_wanted = True
            return False
        finally:
            self._rolling_back = None
        if self._generation is not None or self._committed is not None:
            self.rollbacks += 1  # not the start of a topology: a recovery
        self._generation = bid
        self._failed_roots.difference_update(failed)
        return True

    async def _checkpoint(self) -> bool:
        """A prepare round, then the commit; whether the checkpoint committed."""
        self._drained.clear()
        self._txid += 1
        txid, bid = self._txid, self._next_barrier()
        started = time.monotonic()
        try:
            infos = await self._round(PREPARE, bid, txid, {t: None for t in self._spouts})
        except _Abort as exc:
            self._problem(f"checkpoint {txid} did not complete: {exc}")
            return False
        except _Refused as exc:
            self.failures += 1
            self._problem(f"checkpoint {txid} failed: {exc}")
            return False
        positions: dict[str, dict[str, Any]] = {}
        for task, info in infos.items():
            if info is not None:
                positions.setdefault(self._component_of[task], {}).update(info)
        now = time.time()
        record = {"epoch": self.epoch, "txid": txid, "time": now, "positions": positions}
        try:
            await asyncio.to_thread(self._provider.write_checkpoint, record)
        except Fenced as exc:
            log.warning("checkpoint coordinator stops: %s", exc)
            await asyncio.Event().wait()  # a newer coordinator runs: this one is going away
        except Exception as exc:
            self.failures += 1
            self._problem(f"checkpoint {txid} not committed: {type(exc).__name__}: {exc}")
            return False
        self._committed = (self.epoch, txid)
        self._positions = positions
        self.committed_txid, self.committed_time = txid, now
        self.checkpoint_seconds = time.monotonic() - started
        self.stats.acked += 1
        for task in self._committers:
            self._transport.send_control(task, CHECKPOINT, (COMMIT, bid[0], bid[1], txid, list(self._committed)))
        return True

    def _next_barrier(self) -> tuple[int, int]:
        self._seq += 1
        return self.epoch, self._seq

    async def _round(self, action: str, bid: tuple[int, int], txid: int,
                     extras: Mapping[int, Any]) -> dict[int, Any]:
        """Send ``action`` to the spouts and wait for every task's report: their infos.
        Raises :class:`_Abort` (a rollback is due) or :class:`_Refused` (a task could
        not do its part)."""
        for task, extra in extras.items():
            self._transport.send_control(task, CHECKPOINT, (action, bid[0], bid[1], txid, extra))
        waiting = set(self._component_of)
        infos: dict[int, Any] = {}
        deadline = time.monotonic() + self._timeout
        while waiting:
            message = await self._next_message(deadline)
            if message is None:
                raise _Abort(f"no report from tasks {sorted(waiting)[:10]} within {self._timeout:g} s")
            kind, payload = message
            if kind == CHECKPOINT_DONE:
                task, epoch, seq, ok, info = payload
                if (epoch, seq) != bid or task not in waiting:
                    continue
                if not ok:
                    if action == ROLLBACK:
                        raise _Abort(f"task {task}: {info}")
                    raise _Refused(f"task {task}: {info}")
                waiting.discard(task)
                infos[task] = info
            elif kind == CHECKPOINT_ALERT:
                self._alerted(payload)
                if self._rollback_wanted:
                    raise _Abort(self.last_problem)
        return infos

    def _alerted(self, payload: tuple[int, str, Any, list[int]]) -> None:
        """A task started, or a tree failed: whether a rollback is due. Or a spout drained."""
        task, reason, generation, roots = payload
        if reason == DRAINED:
            self._drained.add(task)
        elif reason == FINISHED:
            self._finished.add(task)
        elif reason == STARTED:
            # After the first round began, a task that starts may have missed its barriers
            # (its worker was not up), or restarted and lost its state: either way it
            # needs a rollback, which costs the others little.
            self._started.add(task)
            self._rollback_wanted = True
            self.last_problem = f"task {task} started"
        elif reason == FAILED and generation is not None:
            # During a rollback round, the tasks it reached already run work since it;
            # a failure from before it is taken back by it.
            current = self._rolling_back if self._rolling_back is not None else self._generation
            if tuple(generation) == current:
                self._rollback_wanted = True
                self._failed_roots.update(roots)
                self.last_problem = f"a tuple failed or timed out (reported by task {task})"

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, taking alerts meanwhile (one may call for a rollback at once),
        or until every spout task drained or is done (and one drained)."""
        deadline = time.monotonic() + seconds
        while not self._rollback_wanted and not self._drained_all():
            message = await self._next_message(deadline)
            if message is None:
                return
            if message[0] == CHECKPOINT_ALERT:
                self._alerted(message[1])

    def _drained_all(self) -> bool:
        """Whether every spout task drained or is done, and one drained: trees of a finite
        input wait for a checkpoint that nothing is left to add to."""
        return bool(self._drained) and (self._drained | self._finished).issuperset(self._spouts)

    async def _await_tasks(self, deadline: float) -> None:
        """Before the first round: wait until every task said it started, or ``deadline``."""
        while not set(self._component_of) <= self._started:
            message = await self._next_message(deadline)
            if message is None:
                return
            if message[0] == CHECKPOINT_ALERT and message[1][1] == STARTED:
                self._started.add(message[1][0])

    async def _next_message(self, deadline: float) -> Message | None:
        """The next message of the inbox, waiting for it until ``deadline`` (then None)."""
        while (message := self.inbox.get_nowait()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.idle = True
            await self.inbox.wait(left)
            self.idle = False
        return message

    async def _retrying(self, call: Callable[[], T]) -> T:
        """``call`` on a thread until it succeeds (the provider may be down at start)."""
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(call)
            except Exception as exc:
                self._problem(f"state provider: {type(exc).__name__}: {exc}")
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                attempt += 1

    def _problem(self, message: str) -> None:
        """Keep ``message`` as the coordinator's last error (status shows it)."""
        self.last_problem = message
        self.stats.record_error(_CheckpointProblem(message), "checkpoint")


class _Refused(Exception):
    """A task could not do its part of a prepare: the checkpoint is dropped."""


class _CheckpointProblem(Exception):
    """A checkpoint or rollback that did not complete, as status shows it."""

