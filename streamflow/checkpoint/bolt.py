"""A bolt task's part in checkpoints (the protocol: :mod:`streamflow.checkpoint`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Hashable, Iterable

from streamflow.checkpoint.party import END, PREPARE, ROLLBACK, BarrierId, Party, upstream_tasks
from streamflow.collector import BoltOutputCollector
from streamflow.components import Stateful
from streamflow.inbox import Inbox, Message
from streamflow.state.keygroups import key_group
from streamflow.state.kv import KeyValueState
from streamflow.state.store import CheckpointId, StateStore
from streamflow.stats import TaskStats
from streamflow.topology import Topology
from streamflow.transport.base import Transport

log = logging.getLogger(__name__)


class BoltCheckpoints(Party):
    """A bolt task's part: aligns barriers on its inputs, saves or restores its state,
    forwards barriers.

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
            if payload.origin.source_task in self._arrived:
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
        """Alert the coordinator if this task failed a tuple since it last looked (or
        could not send one): the failure must reach it before this task's report of the
        next barrier, or the checkpoint could commit (and its spout ack) the failed
        tuple's tree."""
        if self._stats.failed != self._failures_seen or self._collector.failed_roots:
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
        assert self.store is not None
        try:
            self._bolt.pre_prepare(at[1])
            changes = self.state.prepare(at)
        except Exception as exc:
            self._stats.record_error(exc, "pre_prepare")
            return False, f"pre_prepare raised {type(exc).__name__}: {exc}"
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
        """The coordinator committed a checkpoint: fold this task's changes."""
        committed: CheckpointId = tuple(payload[4])  # type: ignore[assignment]
        if self.state is None or not self.initialized:
            return
        assert self.store is not None
        try:
            self._bolt.pre_commit(committed[1])
        except Exception as exc:
            self._stats.record_error(exc, "pre_commit")
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
