"""What every executor shares: the loop that runs one task, reading its inbox.

A worker runs one executor per task, each an asyncio task on the worker's single event
loop: :class:`~streamflow.executor.spout.SpoutExecutor`,
:class:`~streamflow.executor.bolt.BoltExecutor` or
:class:`~streamflow.executor.acker.AckerExecutor`. Each loop turn handles what the inbox
holds (whole batches), flushes what that produced, and yields to the other tasks, so tasks
of one worker interleave batch by batch.
"""

from __future__ import annotations

import copy
import inspect
import time
from abc import ABC, abstractmethod
from typing import Any, Mapping

from streamflow.components import TaskContext
from streamflow.inbox import Inbox
from streamflow.stats import TaskStats
from streamflow.telemetry import Report, TaskHistory, task_report
from streamflow.topology import Topology
from streamflow.transport.base import Transport


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
