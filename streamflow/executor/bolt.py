"""A bolt task's executor: runs ``process`` on each tuple of each inbox batch, then
``end_batch``, then flushes what the batch produced."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Mapping, cast

from streamflow.checkpoint import BoltCheckpoints
from streamflow.collector import BoltOutputCollector
from streamflow.components import AsyncBasicBolt, AsyncBolt, BasicBolt, Bolt
from streamflow.executor.base import ComponentExecutor
from streamflow.inbox import BARRIER, CHECKPOINT, TICK, TUPLES, Message
from streamflow.state.store import StateProvider
from streamflow.tuples import TICK_ORIGIN, Batch, Tuple

MAX_TUPLES_PER_TURN = 256
"""A bolt handles all batches queued in its inbox before it flushes, up to this many
tuples, then lets the other tasks run."""


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
        bolt.emit_many = self.collector.anchored_many_emitter() if basic else self.collector.emit_many
        bolt.emit_direct = self.collector.emit_direct
        bolt.emit_rows = self.collector.emit_rows
        bolt.ack = self.collector.ack
        bolt.ack_all = self.collector.ack_all
        bolt.ack_rows = self.collector.ack_rows
        bolt.fail = self.collector.fail
        bolt.fail_rows = self.collector.fail_rows
        bolt.flush_acks = self.collector.flush_acks
        self._process: Callable[[Batch], Awaitable[None] | None]
        if isinstance(bolt, AsyncBolt):
            self._process = self._process_async_basic if basic else self._process_async
        else:
            handler = _handler(type(bolt))
            if handler == "process_columns":  # validation refuses it in a BasicBolt
                self._process = self._process_columns
            elif handler == "process_batch":
                self._process = self._process_batch_basic if basic else self._process_batch
            else:
                self._process = self._process_basic if basic else self._process_plain
        self._taken: list[Tuple] = []
        """A basic bolt's tuples that ``process`` took in this turn: acked once ``end_batch``
        returns, failed if it raises (a sink's write of the batch failed)."""
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
                    payload = Batch(TICK_ORIGIN, [()], [None])
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
                taken, self._taken = self._taken, []
                try:
                    done = end_batch()
                    if done is not None:
                        await done
                except Exception as exc:
                    stats.record_error(exc, "end_batch")
                    for tup in taken:
                        collector.fail(tup)
                else:
                    if taken:
                        collector.ack_all(taken)
                # Free the turn's tuples and batches now, while they are in the CPU's cache:
                # held until the next turn, after other tasks ran, they cost twice as much (33
                # against 65 ns a Tuple freed, measured).
                del taken, payload, message
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

    def _process_plain(self, batch: Batch) -> None:
        process, fail, record = cast(Bolt, self.bolt).process, self.collector.fail, self.stats.record_error
        for tup in batch.tuples():
            try:
                process(tup)
            except Exception as exc:
                fail(tup)
                record(exc, "process")

    def _process_basic(self, batch: Batch) -> None:
        """A BasicBolt's batch: each tuple that ``process`` took without raising is acked
        with the turn's others once ``end_batch`` returns (see :attr:`_taken`)."""
        tuples, collector = batch.tuples(), self.collector
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
        self._taken += _without(tuples, failed) if failed else tuples

    def _process_columns(self, batch: Batch) -> None:
        """A bolt's own ``process_columns``: an exception fails the whole batch."""
        try:
            cast(Bolt, self.bolt).process_columns(batch)
        except Exception as exc:
            self._batch_failed(batch.tuples(), exc, "process_columns")

    def _process_batch(self, batch: Batch) -> None:
        """A bolt's own ``process_batch``: an exception fails the whole batch."""
        tuples = batch.tuples()
        try:
            cast(Bolt, self.bolt).process_batch(tuples)
        except Exception as exc:
            self._batch_failed(tuples, exc, "process_batch")

    def _process_batch_basic(self, batch: Batch) -> None:
        """A BasicBolt's own ``process_batch``: its emits are anchored to the whole batch,
        which is acked with the turn's others once ``end_batch`` returns."""
        tuples, collector = batch.tuples(), self.collector
        collector.current_batch = tuples
        try:
            cast(Bolt, self.bolt).process_batch(tuples)
        except Exception as exc:
            self._batch_failed(tuples, exc, "process_batch")
        else:
            self._taken += tuples
        finally:
            collector.current_batch = None

    def _batch_failed(self, tuples: list[Tuple], exc: Exception, where: str) -> None:
        fail = self.collector.fail
        for tup in tuples:
            fail(tup)
        self.stats.record_error(exc, where)

    async def _process_async(self, batch: Batch) -> None:
        process = cast(AsyncBolt, self.bolt).process
        for tup in batch.tuples():
            try:
                await process(tup)
            except Exception as exc:
                self.collector.fail(tup)
                self.stats.record_error(exc, "process")

    async def _process_async_basic(self, batch: Batch) -> None:
        tuples, collector = batch.tuples(), self.collector
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
        self._taken += _without(tuples, failed) if failed else tuples

    async def close(self) -> None:
        """Release the bolt's resources once the task has stopped."""
        await self._close_with("cleanup")


def _handler(cls: type) -> str:
    """Which of ``process_columns``, ``process_batch`` and ``process`` the runtime calls:
    the one the bolt's class overrides most nearly, the narrower on a tie (a subclass
    that overrides only ``process`` of a sink that takes batches is handled tuple by
    tuple, so that its ``process`` runs)."""
    def owner(name: str) -> type:
        return next(c for c in cls.__mro__ if name in c.__dict__)

    nearest = "process"
    for name in ("process_batch", "process_columns"):
        found = owner(name)
        if found is not Bolt and issubclass(found, owner(nearest)):
            nearest = name
    return nearest


def _without(tuples: list[Tuple], failed: list[Tuple]) -> list[Tuple]:
    """``tuples`` but the ``failed`` ones (by identity: tuples do not compare by value)."""
    gone = set(map(id, failed))
    return [t for t in tuples if id(t) not in gone]
