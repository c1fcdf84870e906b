"""How busy each worker is, for the load-aware shuffle grouping.

A worker's load is the share of one core its process used over the last
:data:`LOAD_INTERVAL` (CPU time over wall time, so 1.0 is a worker that never waited).
Every :data:`LOAD_INTERVAL` a worker measures its own and sends it back over each
connection a peer opened to send it tuples (see :mod:`streamflow.transport.tcp`), so a
worker knows the load of every worker it sends to, a second old at most. Storm's
``LoadAwareShuffleGrouping`` works from the same kind of report.
"""

from __future__ import annotations

import time
from typing import Collection, Mapping, Protocol

Address = tuple[str, int]
"""A worker's host and port."""

LOAD_INTERVAL = 0.5
"""Seconds between two load measurements (and reports to peers)."""


class LoadSource(Protocol):
    """What a router asks about the tasks it sends to."""

    load_version: int
    """Goes up once per :data:`LOAD_INTERVAL`, when the loads below may have changed."""

    def load_of(self, task: int) -> float | None:
        """The load of the worker that runs ``task``, or None while it is not known."""


class CpuMeter:
    """This process's CPU share between two calls of :meth:`sample`."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.monotonic()

    def sample(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        elapsed = wall - self._wall
        load = (cpu - self._cpu) / elapsed if elapsed > 0 else 0.0
        self._cpu, self._wall = cpu, wall
        return min(load, 1.0)  # threads beside the event loop can add a little past one core


class WorkerLoads:
    """This worker's load and its peers', looked up by task: the :class:`LoadSource` of
    cluster mode, kept up to date by the TCP transport."""

    def __init__(self, local_tasks: Collection[int]) -> None:
        self._local = frozenset(local_tasks)
        self._routes: Mapping[int, Address] = {}
        self._peers: dict[Address, float] = {}
        self.own: float | None = None
        self.load_version = 0

    def load_of(self, task: int) -> float | None:
        if task in self._local:
            return self.own
        address = self._routes.get(task)
        return None if address is None else self._peers.get(address)

    def follow(self, routes: Mapping[int, Address]) -> None:
        """Where each remote task runs now."""
        self._routes = routes

    def peer_reported(self, address: Address, load: float) -> None:
        self._peers[address] = load

    def measured(self, load: float) -> None:
        """This worker's new load: the routers reweigh on their next tuple."""
        self.own = load
        self.load_version += 1
