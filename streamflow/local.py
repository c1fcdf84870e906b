"""Local mode: the whole topology in this process, with in-memory coordination.

Not a separate engine: one :class:`~streamflow.worker.Worker` runs every task with the
in-process transport, through the same executors, groupings and acking that cluster
workers run.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import dataclass

import uvloop

from streamflow.stats import ComponentSummary, format_summary, summarize
from streamflow.topology import ACKER_COMPONENT, CHECKPOINT_COMPONENT, Topology
from streamflow.worker import Worker, worker_gc


@dataclass(frozen=True)
class LocalRun:
    """How a local run ended and what each component did."""

    outcome: str  # "finished", "timeout" or "interrupted"
    seconds: float
    components: list[ComponentSummary]

    def component(self, name: str) -> ComponentSummary:
        return next(c for c in self.components if c.component == name)

    def summary(self) -> str:
        return f"{format_summary(self.components, self.seconds)}\n{self.outcome} in {self.seconds:.2f} s"


def run_local(topology: Topology, timeout: float | None = None) -> LocalRun:
    """Run ``topology`` until its spouts are exhausted and every tree is done, until
    ``timeout`` seconds pass, or until SIGINT/SIGTERM; then stop it cleanly.

    Raises :class:`~streamflow.executor.TaskFailed` if a component cannot start.
    """
    with worker_gc(), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(topology, timeout))


async def _run(topology: Topology, timeout: float | None) -> LocalRun:
    worker = Worker(topology)
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    for sig in signals:
        loop.add_signal_handler(sig, interrupted.set)
    started = time.monotonic()
    finish = asyncio.ensure_future(worker.run_until_finished())
    interrupt = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({finish, interrupt}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if finish.done():
            finish.result()  # raises TaskFailed
            outcome = "finished"
        else:
            outcome = "interrupted" if interrupted.is_set() else "timeout"
    finally:
        seconds = time.monotonic() - started
        finish.cancel()
        interrupt.cancel()
        await worker.stop()
        for sig in signals:
            loop.remove_signal_handler(sig)
    kinds = {spec.name: ("spout" if spec.is_spout else "bolt") for spec in topology.components.values()}
    if topology.acker_count():
        kinds[ACKER_COMPONENT] = "acker"
    if topology.is_stateful:
        kinds[CHECKPOINT_COMPONENT] = "checkpoint"
    return LocalRun(outcome, seconds, summarize(worker.stats(), kinds))
