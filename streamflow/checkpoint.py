"""Checkpoints, as spout and bolt tasks take part in them (the coordinator is
:mod:`streamflow.coordinator`).

Storm 2's protocol, with Flink's aligned barriers so that state is exact:

- **prepare**: the coordinator tells every spout task; each seals what it emitted so far
  as the checkpoint's (noting its :meth:`~streamflow.components.SpoutBase.position`) and
  sends a barrier to every task downstream, behind the tuples it sent before. A bolt
  that got the barrier from one input holds that input's later tuples until the barrier
  came in on all of them (alignment), so its state then reflects exactly the records
  emitted before the spouts' barriers. It waits until it has acked every tuple it took
  before the barrier (a sink: until the server confirmed them), saves its state's
  changes as the checkpoint's pending changes, forwards the barrier and reports done.
- **commit**: once every task reported, the coordinator writes the checkpoint record;
  stateful bolts make their pending changes their data and ack the tuples the
  checkpoint covers (acks are deferred until then), and spouts ack every tuple emitted
  before their barrier: a Kafka offset is committed only once the state that absorbed
  its record is durable.
- **rollback**: after a failure (a tuple failed, a tree timed out, a task restarted),
  the coordinator sends a rollback the same way. Spouts forget what they emitted since
  the last committed checkpoint and seek back to its positions (or fail those tuples,
  for spouts without positions); bolts drop what comes in ahead of the rollback barrier
  on each input, then restore their state as the last committed checkpoint left it.
  The same rollback starts every run: it is how a task gets its state.

A task that has not yet been through a rollback (just started) drops the tuples it
gets: they were sent before its restart was noticed and will be replayed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import Any, Callable, Hashable, Iterable

from streamflow.acking import PendingTrees
from streamflow.collector import BoltOutputCollector, SpoutOutputCollector
from streamflow.components import SpoutBase, Stateful
from streamflow.inbox import BARRIER, CHECKPOINT_ALERT, CHECKPOINT_DONE, Inbox, Message
from streamflow.state.keygroups import key_group
from streamflow.state.kv import KeyValueState
from streamflow.state.store import CheckpointId, StateStore
from streamflow.stats import TaskStats
from streamflow.topology import CHECKPOINT_COMPONENT, Topology
from streamflow.transport.base import Transport
from streamflow.tuples import Tuple

log = logging.getLogger(__name__)

PREPARE, COMMIT, ROLLBACK, END = "prepare", "commit", "rollback", "end"
"""Barrier actions; END says that the sending task's input has ended (finite spouts)."""
STARTED, FAILED = "started", "failed"

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


class _Party:
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
        self.transport.send_control(self.coordinator, CHECKPOINT_ALERT, (self.task, STARTED, None, []))

    def alert(self, roots: list[int]) -> None:
        """Ask the coordinator for a rollback (a tuple failed), with the generation (the
        rollback this task went through last), so that it can tell an alert about work
        since from one about work a rollback already took back; and the root ids of the
        failed tuples, which it hands to the spouts with the rollback: they tell ``fail``
        which trees really failed (a poison record's retries). Once per generation, but
        for alerts that name roots."""
        if self.initialized and (roots or not self._alerted):
            self._alerted = True
            payload = (self.task, FAILED, self.generation, roots[:MAX_FAILED_ROOTS])
            self.transport.send_control(self.coordinator, CHECKPOINT_ALERT, payload)

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


class SpoutCheckpoints(_Party):
    """A spout task's part: seals its emitted trees per checkpoint, acks them at commit,
    turns failed trees into a request for rollback, and rolls back."""

    def __init__(self, topology: Topology, component: str, task: int, transport: Transport,
                 spout: SpoutBase, pending: PendingTrees, collector: SpoutOutputCollector,
                 stats: TaskStats, callback: Callable[[Any, Any], None]) -> None:
        super().__init__(topology, component, task, transport)
        self._spout, self._pending, self._collector, self._stats = spout, pending, collector, stats
        self._callback = callback
        self.floor = 0.0
        """No tree emitted after the last barrier has an emit time below this."""
        self._sealed: list[tuple[CheckpointId, float]] = []
        """Prepared checkpoints not committed yet: their id and the emit time cut."""
        self._failed: set[int] = set()
        """Roots of trees in flight that failed or timed out: ``fail`` gets them at rollback."""

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
        self.rolled_back(bid)
        self.forward(ROLLBACK, bid, txid, (upto, None))
        self.done(bid, True)

    def ended(self) -> None:
        """The spout is exhausted and done: tell the tasks downstream (their windows fire)."""
        if self.initialized:
            self.forward(END, self.generation or (0, 0), 0, None)

    def tree_failed(self, root: int) -> bool:
        """A tree failed: note it for the rollback it asks for. False if not in flight."""
        if root not in self._pending:
            return False
        self._failed.add(root)
        self._stats.failed += 1
        self.alert([])
        return True

    def timed_out(self, cutoff: float) -> None:
        """Trees emitted before ``cutoff`` are overdue: they stay in flight, failed, until
        the rollback they ask for."""
        overdue = self._pending.emitted_before(cutoff)
        if overdue:
            self._failed.update(overdue)
            self.alert([])



class BoltCheckpoints(_Party):
    """A bolt task's part: aligns barriers on its inputs, saves or restores its state,
    defers its acks until commit (stateful bolts), forwards barriers.

    The executor takes its messages through :meth:`take` (messages held during an
    alignment come back in order once it completes) and lets :meth:`admit` decide for
    each batch of tuples whether it is processed now, held, or dropped.
    """

    def __init__(self, topology: Topology, component: str, task: int, transport: Transport,
                 inbox: Inbox, collector: BoltOutputCollector, stats: TaskStats, bolt: Any,
                 store: StateStore | None, timeout: float) -> None:
        super().__init__(topology, component, task, transport)
        self._inbox, self._collector, self._stats, self._bolt = inbox, collector, stats, bolt
        self._inputs = upstream_tasks(topology, component)
        self._timeout = timeout
        self.store = store
        self.state: KeyValueState | None = None
        if store is not None:
            spec = topology.components[component]
            groups = {**topology.config, **spec.config}["topology.state.key.groups"]
            index = topology.task_layout()[component].index(task)
            self.state = KeyValueState(component, index, spec.parallelism, groups,
                                       group_of=lambda key: _group_of(bolt, key, groups))
            collector.deferred = []
        collector.failed_roots = []
        self._ended: set[int] = set()
        """Inputs that said their input ended, since the last rollback."""
        self._aligning: tuple[BarrierId, str, int, Any] | None = None
        self._arrived: set[int] = set()
        self._held: list[Message] = []
        self.released: deque[Message] = deque()
        self._last: BarrierId = (0, 0)
        self._received = 0
        self._committed: CheckpointId | None = None
        self._prepared: list[tuple[CheckpointId, list[Tuple]]] = []
        self._state_initialized = False
        self.rollbacks = 0
        """Restores after the first: rollbacks this task went through."""
        self._failures_seen = 0

    def take(self) -> Message | None:
        """The next message: held ones released by an alignment first, then the inbox."""
        if self.released:
            return self.released.popleft()
        return self._inbox.get_nowait()

    def admit(self, message: Message) -> bool:
        """Whether to process this batch of tuples now; if not it is held (its input's
        barrier came in and others' did not) or dropped (stale: ahead of a rollback
        barrier, or reaching a task that has not been through a rollback yet)."""
        payload = message[1]
        if self._aligning is not None:
            if payload[0].origin.source_task in self._arrived:
                self._held.append(message)
                return False
            if self._aligning[1] == ROLLBACK:
                return False
        elif not self.initialized:
            return False
        self._received += len(payload)
        return True

    def ticks_due(self) -> bool:
        """Whether a tick may reach the bolt now: not on state a rollback is replacing."""
        return self.initialized and (self._aligning is None or self._aligning[1] != ROLLBACK)

    async def barrier(self, message: Message) -> None:
        """A barrier from an input: align on it, and act once every input sent it."""
        source, action, epoch, seq, txid, extra = message[1]
        if action == END:
            self._input_ended(message)
            return
        bid = (epoch, seq)
        if bid <= self._last:
            return  # a barrier already acted on (or a stale one)
        current = self._aligning
        if current is not None and bid != current[0]:
            if source in self._arrived:
                self._held.append(message)  # a later barrier behind an aligned input
                return
            if bid < current[0]:
                return
            # A newer barrier overtakes an alignment that will not complete.
            if action == ROLLBACK or current[1] == ROLLBACK:
                self._held.clear()  # behind the old barrier, ahead of the rollback: stale
            else:
                self.released.extendleft(reversed(self._held))
                self._held = []
                self._aligning, self._arrived = None, set()
                self.released.appendleft(message)
                return
            current = None
        if current is None:
            self._aligning, self._arrived = (bid, action, txid, extra), set()
        self._arrived.add(source)
        if self._arrived >= self._inputs:
            await self._act()

    def _input_ended(self, message: Message) -> None:
        """An input ended; once all have, pass it on and tell the bolt."""
        source = message[1][0]
        if self._aligning is not None:
            if source in self._arrived:
                self._held.append(message)  # behind the barrier it sent
                return
            if self._aligning[1] == ROLLBACK:
                return  # ahead of the rollback: it will end again after
        if not self.initialized or source in self._ended:
            return
        self._ended.add(source)
        if self._ended >= self._inputs:
            self.forward(END, self.generation or (0, 0), 0, None)
            if isinstance(self._bolt, Stateful):
                try:
                    self._bolt.end_of_input()
                except Exception as exc:  # a failure, as in process: roll back, replay, try again
                    self._stats.record_error(exc, "end_of_input")
                    self._stats.failed += 1
                    self.check_failures()

    def check_failures(self) -> None:
        """Alert the coordinator if this task failed a tuple since it last looked: the
        failure must reach it before this task's report of the next barrier, or the
        checkpoint could commit (and its spout ack) the failed tuple's tree."""
        if self._stats.failed != self._failures_seen:
            self._failures_seen = self._stats.failed
            roots = self._collector.failed_roots or []
            self._collector.failed_roots = []
            self.alert(roots)

    async def _act(self) -> None:
        assert self._aligning is not None
        bid, action, txid, extra = self._aligning
        if action == PREPARE:
            self.check_failures()
            ok, info = await self._prepare((bid[0], txid))
            self.check_failures()  # a sink's writes that failed while it waited
            self.forward(PREPARE, bid, txid, None)
        else:
            ok, info = await self._rollback(extra[0])
            self._failures_seen = self._stats.failed
            self._collector.failed_roots = []
            self._ended = set()
            if ok:
                self.rolled_back(bid)
            self.forward(ROLLBACK, bid, txid, extra)
        self.done(bid, ok, info)
        self._last = bid
        self._aligning, self._arrived = None, set()
        self.released.extend(self._held)
        self._held = []

    async def _prepare(self, at: CheckpointId) -> tuple[bool, str | None]:
        if not self.initialized:
            return False, "task not restored yet"
        if self.state is None:
            return await self._acks_caught_up()
        assert self.store is not None and self._collector.deferred is not None
        try:
            self._bolt.pre_prepare(at[1])
            changes = self.state.prepare(at)
        except Exception as exc:
            self._stats.record_error(exc, "pre_prepare")
            return False, f"pre_prepare raised {type(exc).__name__}: {exc}"
        self._prepared.append((at, self._collector.deferred))
        self._collector.deferred = []
        try:
            await asyncio.to_thread(self.store.prepare, at, changes, self._committed)
        except Exception as exc:
            self._stats.record_error(exc, "checkpoint")
            return False, f"cannot save state: {type(exc).__name__}: {exc}"
        return True, None

    async def _acks_caught_up(self) -> tuple[bool, str | None]:
        """Wait until this task acked or failed every tuple it took (a sink acks once its
        server confirmed the writes): a barrier goes on only behind finished work."""
        stats, collector = self._stats, self._collector
        deadline = time.monotonic() + self._timeout
        loop = asyncio.get_running_loop()
        while stats.acked + stats.failed < self._received:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = self._received - stats.acked - stats.failed
                return False, f"{missing} tuples taken before the barrier not acked"
            collector.acks_flushed = waiter = loop.create_future()
            await asyncio.wait({waiter}, timeout=min(left, 1.0))
            collector.acks_flushed = None
        return True, None

    async def _rollback(self, upto: Iterable[int] | None) -> tuple[bool, str | None]:
        committed: CheckpointId | None = tuple(upto) if upto is not None else None  # type: ignore[assignment]
        self._prepared = []
        if self._collector.deferred is not None:
            self._collector.deferred = []
        if self.state is None:
            return True, None
        assert self.store is not None
        try:
            if self._state_initialized:
                self._bolt.pre_rollback()
        except Exception as exc:
            self._stats.record_error(exc, "pre_rollback")
        try:
            data = await asyncio.to_thread(self.store.restore, committed, self.state.owned_groups())
        except Exception as exc:
            self._stats.record_error(exc, "restore")
            self.initialized = False
            return False, f"cannot restore state: {type(exc).__name__}: {exc}"
        self.state.load(data)
        self._committed = committed
        if self._state_initialized:
            self.rollbacks += 1
        else:
            try:
                self._bolt.init_state(self.state)
            except Exception as exc:
                self._stats.record_error(exc, "init_state")
                return False, f"init_state raised {type(exc).__name__}: {exc}"
            self._state_initialized = True
        return True, None

    async def commit(self, payload: tuple[str, int, int, int, Any]) -> None:
        """The coordinator committed a checkpoint: fold this task's changes, release acks."""
        committed: CheckpointId = tuple(payload[4])  # type: ignore[assignment]
        if self.state is None or not self.initialized:
            return
        assert self.store is not None
        try:
            self._bolt.pre_commit(committed[1])
        except Exception as exc:
            self._stats.record_error(exc, "pre_commit")
        covered = [tuples for at, tuples in self._prepared if at <= committed]
        self._prepared = [(at, tuples) for at, tuples in self._prepared if at > committed]
        for tuples in covered:
            self._collector.ack_now(tuples)
        self._collector.flush_acks()
        self.state.committed(committed)
        self._committed = committed
        try:
            await asyncio.to_thread(self.store.commit, committed, self.state.owned_groups())
        except Exception as exc:  # folded at the next prepare or restore
            log.warning("task %d: checkpoint %d committed, its changes not folded yet: %s",
                        self.task, committed[1], exc)

    def metrics(self) -> dict[str, float]:
        """State size and checkpoint figures, for status and /metrics."""
        if self.state is None:
            return {}
        return {"state.keys": len(self.state), "state.bytes": self.state.bytes,
                "state.rollbacks": self.rollbacks}


def _group_of(bolt: Any, key: Hashable, groups: int) -> int:
    """The key group of a state key: the bolt's say (:meth:`Stateful.state_key_group`),
    else the key's own."""
    group = bolt.state_key_group(key, groups)
    return key_group(key, groups) if group is None else int(group)
