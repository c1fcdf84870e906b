"""Running a topology in this process to its end, as ``run_local`` does, keeping the
worker: tests then read its tasks' figures, metrics and state."""

from __future__ import annotations

import asyncio

from streamflow.stats import TaskStats
from streamflow.topology import Topology
from streamflow.worker import Worker


def run(topology: Topology, timeout: float = 30) -> Worker:
    """Run ``topology`` as ``run_local`` does, to its end (a timeout fails the test), and
    return the worker, whose tasks' figures, metrics and state the test then reads."""
    worker = Worker(topology)

    async def main() -> None:
        try:
            await asyncio.wait_for(worker.run_until_finished(), timeout)
        finally:
            await worker.stop()

    asyncio.run(main())
    return worker


def stats(worker: Worker, component: str) -> TaskStats:
    """The counters of ``component``'s tasks, summed, with its latest error."""
    total = TaskStats(component, 0)
    for executor in worker.executors:
        if executor.component == component:
            for name in ("emitted", "executed", "acked", "failed", "replayed", "errors"):
                setattr(total, name, getattr(total, name) + getattr(executor.stats, name))
            last = executor.stats.last_error
            if last is not None and (total.last_error is None or last.time >= total.last_error.time):
                total.last_error = last
    return total
