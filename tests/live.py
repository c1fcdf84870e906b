"""A topology run in this process on a thread of its own, for tests that act on it and look
at its tasks while it runs."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import uvloop
from cluster import wait_for

from streamflow import Topology
from streamflow.stats import TaskStats
from streamflow.telemetry import add_metrics
from streamflow.worker import Worker


class Shared:
    """State shared by every task's copy of a test component (a deep copy returns it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.attempts: Counter[Any] = Counter()
        self.seen: list[Any] = []

    def __deepcopy__(self, memo: dict[int, Any]) -> Shared:
        return self


class LiveRun:
    """A topology run in local mode (one :class:`~streamflow.worker.Worker`, as
    ``run_local`` runs it) on a thread of its own, so that a test can act and look at the
    tasks' counters, errors and metrics while it runs."""

    def __init__(self, topology: Topology, timeout: float) -> None:
        self.topology, self.timeout = topology, timeout
        self.outcome: str | None = None
        self.error: BaseException | None = None
        self.worker: Worker | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="live-run", daemon=True)
        self._thread.start()
        assert self._started.wait(10), "the run did not start"

    def _main(self) -> None:
        async def main() -> None:
            self.worker = Worker(self.topology)
            self._stop, self._loop = asyncio.Event(), asyncio.get_running_loop()
            self._started.set()
            finish = asyncio.ensure_future(self.worker.run_until_finished())
            stop = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({finish, stop}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
                if finish.done():
                    finish.result()
                    self.outcome = "finished"
                else:
                    self.outcome = "stopped" if stop.done() else "timeout"
            finally:
                finish.cancel()
                stop.cancel()
                await self.worker.stop()

        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())
        except BaseException as exc:  # handed to join()
            self.error = exc
            self._started.set()

    def tasks(self, component: str) -> list[TaskStats]:
        assert self.worker is not None
        return [s for s in self.worker.stats() if s.component == component]

    def last_error(self, component: str) -> str | None:
        errors = [s.last_error for s in self.tasks(component) if s.last_error is not None]
        return max(errors, key=lambda e: e.time).message if errors else None

    def metrics(self, component: str) -> dict[str, Any]:
        """The component's metrics summed over its tasks, as ``status`` sums them."""
        assert self.worker is not None
        total: dict[str, Any] = {}
        for executor in self.worker.executors:
            if executor.component == component and getattr(executor, "started", False):
                add_metrics(total, executor.instance.metrics())  # type: ignore[attr-defined]
        return total

    def executor(self, component: str) -> Any:
        """The executor of the component's first task."""
        assert self.worker is not None
        return next(e for e in self.worker.executors if e.component == component)

    def instance(self, component: str) -> Any:
        """The component instance of the component's first task."""
        return self.executor(component).instance

    def metrics_when(self, component: str, condition: Callable[[dict[str, Any]], Any], timeout: float,
                     what: str) -> dict[str, Any]:
        """Wait until the component's metrics satisfy ``condition``; return them."""
        return wait_for(lambda: (m := self.metrics(component)) and condition(m) and m, timeout, what)  # type: ignore[no-any-return]

    def stop(self) -> None:
        """End the run (if it still runs)."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # it ended meanwhile

    def join(self, timeout: float) -> str:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the run did not end within {timeout:g} s"
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome
