"""Executors: the loop that runs one task, reading its inbox and driving its component.

A worker runs one executor per task, each an asyncio task on the worker's single event
loop. Each loop turn handles one inbox message (a whole batch), flushes what the batch
produced, and yields to the other tasks, so tasks of one worker interleave batch by batch.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import time
from abc import ABC, abstractmethod
from typing import Any, Awaitable, Callable, Mapping, cast

from streamflow.acking import COMPLETED, FAILED, AckerState, PendingTrees
from streamflow.checkpoint import ROLLBACK, BoltCheckpoints, SpoutCheckpoints
from streamflow.collector import BoltOutputCollector, SpoutOutputCollector
from streamflow.components import (
    AsyncBasicBolt,
    AsyncBolt,
    AsyncSpout,
    BasicBolt,
    Bolt,
    Spout,
    TaskContext,
)
from streamflow.inbox import (
    ACK_ACK,
    ACK_FAIL,
    ACK_INIT,
    BARRIER,
    CHECKPOINT,
    TICK,
    TREE_DONE,
    TREE_FAILED,
    TUPLES,
    Inbox,
    Message,
)
from streamflow.state.store import StateProvider
from streamflow.stats import TaskStats
from streamflow.telemetry import Report, TaskHistory, task_report
from streamflow.topology import Topology
from streamflow.transport.base import Transport
from streamflow.tuples import TICK_ORIGIN, Tuple

MAX_TUPLES_PER_TURN = 256
"""A bolt handles all batches queued in its inbox before it flushes, up to this many
tuples, then lets the other tasks run."""

SPOUT_IDLE_WAIT_MAX = 0.005
"""Longest pause of a spout whose ``next_tuple`` emitted nothing (it doubles from 0.1 ms):
an idle spout costs little CPU and a spout that has data again resumes within 5 ms."""


class TaskFailed(Exception):
    """A component could not start (``open``/``prepare`` raised): the task cannot run."""


async def _call(result: Any) -> Any:
    """Await ``result`` if a coroutine method returned it, else pass it through."""
    if inspect.isawaitable(result):
        return await result
    return result


class Executor(ABC):
    """What every task's executor has: its inbox, stats and state flags."""

    kind = "acker"
    """What the task runs, as reports name it: "spout", "bolt" or "acker"."""

    def __init__(self, component: str, task: int, inbox: Inbox) -> None:
        self.component = component
        self.task = task
        self.inbox = inbox
        self.stats = TaskStats(component, task)
        self.history = TaskHistory(self.stats, time.monotonic())
        self.idle = False
        """True while waiting on an empty inbox with nothing left to send."""

    @abstractmethod
    async def run(self) -> None:
        """Run the task until cancelled."""

    def metrics(self) -> Mapping[str, Any]:
        """The component's own metrics (none for ackers)."""
        return {}

    def report(self) -> Report:
        """The task's figures now, since start and over the recent windows (about once
        a second: each call may keep a snapshot for the windows)."""
        return task_report(self.stats, self.kind, self.history, time.monotonic(),
                           queue=self.inbox.queued_tuples, backpressure=self.inbox.blocked_seconds,
                           metrics=self.metrics())


class ComponentExecutor(Executor):
    """An executor of a user component: a deep copy of the prototype, per task."""

    def __init__(
        self, topology: Topology, component: str, task: int, inbox: Inbox, transport: Transport,
        local_tasks: frozenset[int],
    ) -> None:
        super().__init__(component, task, inbox)
        spec = topology.components[component]
        try:
            self.instance: Any = copy.deepcopy(spec.component)
        except Exception as exc:
            raise TaskFailed(
                f"component {component!r}: cannot copy its instance for task {task} "
                f"({type(exc).__name__}: {exc}); open resources in open()/prepare(), not __init__"
            ) from None
        self._component_config = spec.config
        self.config: Mapping[str, Any] = {**topology.config, **spec.config}
        layout = topology.task_layout()
        self.context = TaskContext(topology.name, component, task, layout,
                                   frozenset(t for sub in spec.inputs for t in layout[sub.source]))
        self.topology = topology
        self.transport = transport
        self._collector_args = (topology, component, task, transport, local_tasks, self.stats)
        self.started = False

    def metrics(self) -> Mapping[str, Any]:
        """The component's ``metrics()`` once it started; an exception there is the
        component's error, not the worker's."""
        if not self.started:
            return {}
        try:
            return dict(self.instance.metrics())
        except Exception as exc:
            self.stats.record_error(exc, "metrics")
            return {}

    async def _start(self, method: str) -> None:
        try:
            await _call(getattr(self.instance, method)(self.config, self.context))
        except Exception as exc:
            self.stats.record_error(exc, method)
            raise TaskFailed(
                f"component {self.component!r} task {self.task}: {method}() raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self.started = True

    @abstractmethod
    async def close(self) -> None:
        """Release the component's resources once the task has stopped."""

    async def _close_with(self, method: str) -> None:
        if not self.started:
            return
        try:
            await _call(getattr(self.instance, method)())
        except Exception as exc:
            self.stats.record_error(exc, method)


class SpoutExecutor(ComponentExecutor):
    """Calls ``next_tuple`` while fewer than max-spout-pending trees are in flight, hands
    tree completions and failures from the ackers to ``ack``/``fail``, and fails trees
    that exceed the message timeout."""

    kind = "spout"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending = PendingTrees()
        self.collector = SpoutOutputCollector(*self._collector_args, pending=self.pending)
        self.spout: Spout | AsyncSpout = self.instance
        self.spout.emit = self.collector.emit
        self.spout.emit_direct = self.collector.emit_direct
        self.active = True
        self.finished = False
        """True once the spout is exhausted and none of its trees is in flight."""
        self._max_pending = self.config["topology.max.spout.pending"] or float("inf")
        self._batch = self.config["topology.producer.batch.size"]
        self._timeout = float(self.config["topology.message.timeout.secs"])
        self._held = False
        self._resume_at = self._max_pending - min(self._batch, self._max_pending // 2)
        self.checkpoints = SpoutCheckpoints(
            self.topology, self.component, self.task, self.transport, self.spout, self.pending,
            self.collector, self.stats, self._callback) if self.topology.is_stateful else None
        """This task's part in checkpoints, in a topology with a stateful bolt."""

    def activate(self) -> None:
        self.active = True
        self.spout.activate()

    def deactivate(self) -> None:
        self.active = False
        self.spout.deactivate()

    def reconfigure(self, topology_config: Mapping[str, Any]) -> None:
        """Lay a changed topology config under this component's own and tell the spout."""
        self.config = {**self.config, **topology_config, **self._component_config}
        self._callback(self.spout.reconfigure, self.config)

    async def run(self) -> None:
        await self._start("open")
        checkpoints = self.checkpoints
        if checkpoints is not None:
            checkpoints.started()
        loop_time = time.monotonic
        next_expiry = loop_time() + self._timeout
        expiry_every = min(self._timeout / 10, 1.0)
        idle_wait = 0.0
        while True:
            self._handle_inbox()
            now = loop_time()
            if checkpoints is not None and now < checkpoints.floor:
                now = checkpoints.floor  # trees emitted after a barrier are dated after it
            self.collector.now = now
            if now >= next_expiry:
                self._expire(now - self._timeout)
                next_expiry = now + expiry_every
            emitted = await self._emit_round() if self._may_emit() else 0
            await self.collector.flush()
            if emitted:
                idle_wait = 0.0
                await asyncio.sleep(0)
                continue
            if self.collector.acked_at_once:
                continue
            if not self.pending and not self.finished and self._exhausted():
                self.finished = True
                if self.checkpoints is not None:
                    self.checkpoints.ended()
            self.idle = True
            if self.finished:
                await self.inbox.wait()
            else:
                idle_wait = min(max(idle_wait * 2, 0.0001), SPOUT_IDLE_WAIT_MAX)
                await self.inbox.wait(min(idle_wait, max(next_expiry - now, 0.0)))
            self.idle = False

    def _may_emit(self) -> bool:
        """Whether to call ``next_tuple`` now. Once max-spout-pending is reached, the spout
        waits until a refill's worth of trees completed, so that it emits in batches
        rather than one tuple per returning ack."""
        if not self.active or (self.checkpoints is not None and not self.checkpoints.initialized):
            return False
        if self._held:
            if len(self.pending) > self._resume_at:
                return False
            self._held = False
        return True

    def _exhausted(self) -> bool:
        try:
            return bool(self.spout.exhausted())
        except Exception as exc:
            self.stats.record_error(exc, "exhausted")
            return False

    async def _emit_round(self) -> int:
        """Call ``next_tuple`` until it emits nothing, the round's batch is full, or
        max-spout-pending is reached. Returns how many tuples were emitted."""
        stats, pending = self.stats, self.pending
        start = stats.emitted
        limit, budget = self._max_pending, start + self._batch
        next_tuple = self.spout.next_tuple
        while True:
            if len(pending) >= limit:
                self._held = True
                break
            before = stats.emitted
            try:
                done = next_tuple()
                if done is not None:  # an AsyncSpout's coroutine
                    await done
            except Exception as exc:
                stats.record_error(exc, "next_tuple")
                break
            if stats.emitted == before or stats.emitted >= budget:
                break
        return stats.emitted - start

    def _handle_inbox(self) -> None:
        """Deliver tree completions and failures to the spout."""
        spout, stats, pending = self.spout, self.stats, self.pending
        if self.collector.acked_at_once:
            done, self.collector.acked_at_once = self.collector.acked_at_once, []
            for msg_id in done:
                stats.acked += 1
                self._callback(spout.ack, msg_id)
        now = time.monotonic()
        latency = stats.complete_latency
        checkpoints = self.checkpoints
        while (message := self.inbox.get_nowait()) is not None:
            kind, roots = message
            if checkpoints is not None:
                if kind == CHECKPOINT:
                    checkpoints.handle(roots)
                    if roots[0] == ROLLBACK:
                        self.finished = False  # what it replays is in flight again
                    continue
                if kind == TREE_FAILED:
                    for root in roots:
                        checkpoints.tree_failed(root)
                    continue
            for root in roots:
                tree = pending.complete(root)
                if tree is None:
                    continue  # already timed out and failed
                if kind == TREE_DONE:
                    stats.acked += 1
                    latency.add(now - tree[1])
                    self._callback(spout.ack, tree[0])
                else:  # TREE_FAILED
                    stats.failed += 1
                    self.collector.failed_ids.add(tree[0])
                    self._callback(spout.fail, tree[0])

    def _expire(self, cutoff: float) -> None:
        if self.checkpoints is not None:
            self.checkpoints.timed_out(cutoff)
            return
        for msg_id in self.pending.expired(cutoff):
            self.stats.failed += 1
            self.collector.failed_ids.add(msg_id)
            self._callback(self.spout.fail, msg_id)

    def _callback(self, method: Any, msg_id: Any) -> None:
        try:
            method(msg_id)
        except Exception as exc:
            self.stats.record_error(exc, method.__name__)

    async def close(self) -> None:
        """Release the spout's resources once the task has stopped."""
        await self._close_with("close")


class BoltExecutor(ComponentExecutor):
    """Runs ``process`` on each tuple of each inbox batch, then ``end_batch``, then flushes."""

    kind = "bolt"

    def __init__(self, *args: Any, provider: StateProvider | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.collector = BoltOutputCollector(*self._collector_args)
        bolt: Bolt | AsyncBolt = self.instance
        self.bolt = bolt
        basic = isinstance(bolt, (BasicBolt, AsyncBasicBolt))
        bolt.emit = self.collector.anchored_emitter() if basic else self.collector.emit
        bolt.emit_direct = self.collector.emit_direct
        bolt.ack = self.collector.ack
        bolt.ack_all = self.collector.ack_all
        bolt.fail = self.collector.fail
        bolt.flush_acks = self.collector.flush_acks
        self._process: Callable[[list[Tuple]], Awaitable[None] | None]
        if isinstance(bolt, AsyncBolt):
            self._process = self._process_async_basic if basic else self._process_async
        else:
            self._process = self._process_basic if basic else self._process_plain
        self._tick_every: float | None = self.config.get("topology.tick.tuple.freq.secs") or bolt.tick_seconds
        self.checkpoints: BoltCheckpoints | None = None
        """This task's part in checkpoints, in a topology with a stateful bolt."""
        if self.topology.is_stateful:
            spec = self.topology.components[self.component]
            store = provider.store(self.component) if spec.is_stateful and provider is not None else None
            self.checkpoints = BoltCheckpoints(
                self.topology, self.component, self.task, self.transport, self.inbox, self.collector, self.stats,
                bolt, store, float(self.config["topology.message.timeout.secs"]))

    def metrics(self) -> Mapping[str, Any]:
        """The component's metrics, and its state's (keys, bytes, rollbacks) when stateful."""
        metrics = super().metrics()
        if self.checkpoints is not None and self.started:
            return {**metrics, **self.checkpoints.metrics()}
        return metrics

    async def run(self) -> None:
        await self._start("prepare")
        checkpoints = self.checkpoints
        if checkpoints is not None:
            checkpoints.started()
        if self._tick_every:
            self._schedule_tick(self._tick_every)
        inbox, collector, stats = self.inbox, self.collector, self.stats
        take = inbox.get_nowait if checkpoints is None else checkpoints.take
        process = self._process
        end_batch: Callable[[], Awaitable[None] | None] = self.bolt.end_batch
        clock, latency = time.perf_counter, stats.execute_latency
        while True:
            message = take()
            if message is None:
                self.idle = True
                await inbox.wait()
                self.idle = False
                continue
            handled = 0
            control: Message | None = None
            started = clock()
            while message is not None:  # drain the inbox: one flush for all queued batches
                kind, payload = message
                if kind != TUPLES:
                    if kind != TICK:  # checkpoint traffic: after this batch is done
                        control = message
                        break
                    if checkpoints is not None and not checkpoints.ticks_due():
                        message = take()  # no tick on state that is not restored yet
                        continue
                    payload = [Tuple((), TICK_ORIGIN, None)]
                elif checkpoints is not None and not checkpoints.admit(message):
                    message = take()  # held behind a barrier, or stale
                    continue
                handled += len(payload)
                done = process(payload)
                if done is not None:  # an async bolt's batch
                    await done
                if handled >= MAX_TUPLES_PER_TURN:
                    break
                message = take()
            if handled:
                stats.executed += handled
                try:
                    done = end_batch()
                    if done is not None:
                        await done
                except Exception as exc:
                    stats.record_error(exc, "end_batch")
                took = clock() - started
                stats.busy += took
                latency.add_many(took / handled, handled)
                await collector.flush()
                if checkpoints is not None:
                    checkpoints.check_failures()
            if control is not None:
                await self._checkpoint_message(control)
                await collector.flush()  # what the bolt emitted at the end of its input
            await asyncio.sleep(0)

    async def _checkpoint_message(self, message: Message) -> None:
        """A barrier from an input, or a commit from the coordinator."""
        assert self.checkpoints is not None
        if message[0] == BARRIER:
            await self.checkpoints.barrier(message)
        elif message[0] == CHECKPOINT:
            await self.checkpoints.commit(message[1])

    def _schedule_tick(self, every: float) -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self.inbox.put_control(TICK, None)
            loop.call_later(every, tick)

        loop.call_later(every, tick)

    def _process_plain(self, tuples: list[Tuple]) -> None:
        process, fail, record = cast(Bolt, self.bolt).process, self.collector.fail, self.stats.record_error
        for tup in tuples:
            try:
                process(tup)
            except Exception as exc:
                fail(tup)
                record(exc, "process")

    def _process_basic(self, tuples: list[Tuple]) -> None:
        """A BasicBolt's batch: each tuple that ``process`` took without raising is acked,
        all in one call at the end (a tuple's acks leave with the batch either way)."""
        collector = self.collector
        process, fail = cast(Bolt, self.bolt).process, collector.fail
        failed: list[Tuple] = []
        for tup in tuples:
            collector.current = tup
            try:
                process(tup)
            except Exception as exc:
                fail(tup)
                failed.append(tup)
                self.stats.record_error(exc, "process")
        collector.current = None
        collector.ack_all(_without(tuples, failed) if failed else tuples)

    async def _process_async(self, tuples: list[Tuple]) -> None:
        process = cast(AsyncBolt, self.bolt).process
        for tup in tuples:
            try:
                await process(tup)
            except Exception as exc:
                self.collector.fail(tup)
                self.stats.record_error(exc, "process")

    async def _process_async_basic(self, tuples: list[Tuple]) -> None:
        collector = self.collector
        process = cast(AsyncBolt, self.bolt).process
        failed: list[Tuple] = []
        for tup in tuples:
            collector.current = tup
            try:
                await process(tup)
            except Exception as exc:
                collector.fail(tup)
                failed.append(tup)
                self.stats.record_error(exc, "process")
        collector.current = None
        collector.ack_all(_without(tuples, failed) if failed else tuples)

    async def close(self) -> None:
        """Release the bolt's resources once the task has stopped."""
        await self._close_with("cleanup")


def _without(tuples: list[Tuple], failed: list[Tuple]) -> list[Tuple]:
    """``tuples`` but the ``failed`` ones (by identity: tuples do not compare by value)."""
    gone = set(map(id, failed))
    return [t for t in tuples if id(t) not in gone]


class AckerExecutor(Executor):
    """Runs :class:`~streamflow.acking.AckerState` for the trees whose root ids map to
    this acker task, and tells spout tasks when their trees complete or fail."""

    def __init__(self, component: str, task: int, inbox: Inbox, transport: Transport,
                 timeout: float) -> None:
        super().__init__(component, task, inbox)
        self.state = AckerState()
        self._transport = transport
        self._timeout = timeout

    async def run(self) -> None:
        state, inbox, stats = self.state, self.inbox, self.stats
        loop_time, clock = time.monotonic, time.perf_counter
        next_expiry = loop_time() + self._timeout
        while True:
            if not len(inbox):
                self.idle = True
                await inbox.wait(max(next_expiry - loop_time(), 0.0))
                self.idle = False
            started = clock()
            now = loop_time()
            if now >= next_expiry:
                state.expire(now - self._timeout)
                next_expiry = now + self._timeout / 2
            done: dict[int, list[int]] = {}
            failed: dict[int, list[int]] = {}
            while (message := inbox.get_nowait()) is not None:
                kind, payload = message
                stats.executed += len(payload)
                if kind == ACK_ACK:
                    state.ack_all(payload, now, done)
                elif kind == ACK_INIT:
                    for root, xor, spout in payload:
                        outcome = state.init(root, xor, spout, now)
                        if outcome == COMPLETED:
                            done.setdefault(spout, []).append(root)
                        elif outcome == FAILED:
                            failed.setdefault(spout, []).append(root)
                elif kind == ACK_FAIL:
                    for root in payload:
                        spout = state.fail(root, now)
                        if spout is not None:
                            failed.setdefault(spout, []).append(root)
            for spout, roots in done.items():
                stats.acked += len(roots)
                self._transport.send_control(spout, TREE_DONE, roots)
            for spout, roots in failed.items():
                stats.failed += len(roots)
                self._transport.send_control(spout, TREE_FAILED, roots)
            stats.busy += clock() - started
            await asyncio.sleep(0)
