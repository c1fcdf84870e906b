"""A worker: the tasks of one topology that share a process and an event loop.

Local mode runs every task in one worker; in cluster mode each worker process runs the
tasks assigned to its slot. Either way the worker builds one inbox and one executor per
task and connects them through a :class:`~streamflow.transport.Transport`.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
from contextlib import contextmanager
from typing import Callable, Collection, Iterator, Mapping

from streamflow.coordinator import CheckpointCoordinator
from streamflow.executor import (
    AckerExecutor,
    BoltExecutor,
    ComponentExecutor,
    Executor,
    SpoutExecutor,
    TaskFailed,
)
from streamflow.inbox import Inbox
from streamflow.logs import TASK
from streamflow.state.providers import open_provider
from streamflow.stats import TaskStats
from streamflow.topology import ACKER_COMPONENT, CHECKPOINT_COMPONENT, Topology
from streamflow.transport import InProcessTransport, Transport

TransportFactory = Callable[[Mapping[int, Inbox]], Transport]

QUIESCENCE_POLL = 0.01
"""Seconds between two checks that a finished topology has nothing left in flight."""

GC_YOUNG_THRESHOLD = 50_000
"""Net allocations between two runs of the cyclic garbage collector's youngest generation
while a worker runs (Python's default is 700). Tuples, their values and anchors are
short-lived and freed by reference counting, but a batch in flight holds thousands of
them: the threshold must exceed what a few batches allocate, or the collector keeps
walking the batches in flight to find no cycle (measured in bench/local_wordcount.py)."""


@contextmanager
def worker_gc() -> Iterator[None]:
    """Run the youngest generation every :data:`GC_YOUNG_THRESHOLD` allocations while a
    worker runs in this process; the thresholds before are restored after."""
    before = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


class Worker:
    """Runs the given tasks of ``topology`` (all of them by default) on the current loop."""

    def __init__(
        self,
        topology: Topology,
        tasks: Collection[int] | None = None,
        transport: TransportFactory = InProcessTransport,
    ) -> None:
        self.topology = topology
        layout = topology.task_layout()
        owner = {task: component for component, ids in layout.items() for task in ids}
        self.tasks = frozenset(owner if tasks is None else tasks)
        capacity = topology.config["topology.executor.receive.buffer.size"]
        self.inboxes = {task: Inbox(capacity) for task in sorted(self.tasks)}
        self.transport = transport(self.inboxes)
        timeout = float(topology.config["topology.message.timeout.secs"])
        self.provider = open_provider(topology.name, topology.config) if topology.is_stateful else None
        """Where stateful bolts keep their state, in a topology with one."""
        self.executors: list[Executor] = []
        for task in sorted(self.tasks):
            component = owner[task]
            inbox = self.inboxes[task]
            if component == ACKER_COMPONENT:
                self.executors.append(AckerExecutor(component, task, inbox, self.transport, timeout))
            elif component == CHECKPOINT_COMPONENT:
                assert self.provider is not None
                self.executors.append(CheckpointCoordinator(topology, task, inbox, self.transport, self.provider))
            elif topology.components[component].is_spout:
                self.executors.append(SpoutExecutor(topology, component, task, inbox, self.transport, self.tasks))
            else:
                self.executors.append(BoltExecutor(topology, component, task, inbox, self.transport, self.tasks,
                                                   provider=self.provider))
        self._running: list[asyncio.Task[None]] = []

    @property
    def spouts(self) -> list[SpoutExecutor]:
        return [e for e in self.executors if isinstance(e, SpoutExecutor)]

    def stats(self) -> list[TaskStats]:
        return [e.stats for e in self.executors]

    def start(self) -> None:
        """Start every executor as a task of the running loop, each in a context that
        names its component and task (for log lines)."""
        self._running = []
        for e in self.executors:
            context = contextvars.copy_context()
            context.run(TASK.set, (e.component, e.task))
            self._running.append(asyncio.create_task(e.run(), name=f"{e.component}[{e.task}]", context=context))

    def finished(self) -> bool:
        """True when every spout is exhausted with no tree in flight and every task is idle
        with an empty inbox: nothing can produce another tuple."""
        return all(s.finished for s in self.spouts) and all(
            e.idle and not len(e.inbox) for e in self.executors
        )

    async def run_until_finished(self) -> None:
        """Run until :meth:`finished` (twice in a row, a poll apart), or raise
        :class:`TaskFailed` if a task could not start."""
        if not self._running:
            self.start()
        quiet_polls = 0
        while quiet_polls < 2:
            done = [t for t in self._running if t.done()]
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc if isinstance(exc, TaskFailed) else TaskFailed(
                        f"task {task.get_name()} crashed: {type(exc).__name__}: {exc}"
                    ) from exc
            quiet_polls = quiet_polls + 1 if self.finished() else 0
            await asyncio.sleep(QUIESCENCE_POLL)

    async def stop(self) -> None:
        """Cancel every executor, then let each component release its resources."""
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        self._running = []
        for e in self.executors:
            if isinstance(e, ComponentExecutor):
                await e.close()
        if self.provider is not None:
            self.provider.close()
