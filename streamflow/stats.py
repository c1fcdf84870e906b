"""Per-task counters and errors, and the per-component summary built from them.

Counters are plain ints bumped on the hot path (an attribute increment); everything
derived from them (rates, tables) is computed when asked for.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Iterable

from streamflow.errors import StreamflowError

log = logging.getLogger("streamflow.errors")

ERROR_LOG_INTERVAL = 5.0
"""Seconds between two logged errors of one task: a bolt failing every tuple must not log
per tuple. The count and the last error are always kept."""


@dataclass(frozen=True)
class ErrorRecord:
    """A component's error as status pages show it: when, where and what."""

    time: float
    task: int
    message: str


class Histogram:
    """Counts of observations (seconds) in fixed log-spaced buckets, 0.1 ms to 1 hour:
    cheap to add to (one bisect), mergeable across tasks and workers, and precise to
    the bucket width (each bucket is 20% wider than the last)."""

    BOUNDS: tuple[float, ...] = tuple(0.0001 * 1.2**i for i in range(int(math.log(36000000, 1.2)) + 2))

    __slots__ = ("counts",)

    def __init__(self, counts: list[int] | None = None) -> None:
        self.counts = counts or [0] * (len(self.BOUNDS) + 1)

    def add(self, seconds: float) -> None:
        self.counts[bisect_left(self.BOUNDS, seconds)] += 1

    def add_many(self, seconds: float, n: int) -> None:
        """Count ``n`` observations of ``seconds`` (a batch's mean time per tuple)."""
        self.counts[bisect_left(self.BOUNDS, seconds)] += n

    def sparse(self) -> list[list[int]]:
        """``[[bucket, count], ...]`` of the non-empty buckets: how histograms travel in
        heartbeats, where most of the ~110 buckets are empty."""
        return [[i, n] for i, n in enumerate(self.counts) if n]

    @classmethod
    def from_sparse(cls, pairs: Iterable[Iterable[int]]) -> Histogram:
        histogram = cls()
        for i, n in pairs:
            histogram.counts[i] += n
        return histogram

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made since ``earlier`` (a snapshot of the same histogram)."""
        return Histogram([a - b for a, b in zip(self.counts, earlier.counts, strict=True)])

    @property
    def total(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile, or None if empty."""
        total = self.total
        if not total:
            return None
        rank, seen = q * total, 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank and n:
                return self.BOUNDS[i] if i < len(self.BOUNDS) else math.inf
        return math.inf


@dataclass
class TaskStats:
    """Counters of one task. ``emitted`` counts emit calls, ``executed`` input tuples."""

    component: str
    task: int
    emitted: int = 0
    executed: int = 0
    acked: int = 0
    failed: int = 0
    replayed: int = 0
    """Spout tasks: emits of a message id that had failed (a replay)."""
    errors: int = 0
    busy: float = 0.0
    """Bolt and acker tasks: seconds spent handling input; over elapsed time, the
    task's capacity (Storm's UI figure: near 1, the task is the bottleneck)."""
    last_error: ErrorRecord | None = None
    complete_latency: Histogram = field(default_factory=Histogram, repr=False)
    """Spout tasks: seconds from emit to the whole tree acked."""
    execute_latency: Histogram = field(default_factory=Histogram, repr=False)
    """Bolt tasks: seconds per input tuple, timed per batch (a batch's time over its
    tuples) so that the hot path pays two clock reads per batch, not per tuple."""
    _last_logged: float = field(default=0.0, repr=False)

    def record_error(self, exc: BaseException, doing: str) -> None:
        """Count an exception raised by a component and keep it as the last error.

        The log gives it as one line that says where it was raised (at most every
        :data:`ERROR_LOG_INTERVAL` seconds per task). Its traceback is added only where
        the log shows DEBUG (``--log-level debug``, ``set-log-level``), to debug a
        component, and never for a :class:`~streamflow.errors.StreamflowError`, whose line
        says all (a connector's "Kafka at HOST:PORT: ..." while a broker is away)."""
        self.errors += 1
        where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        at = f" at {where[0].filename}:{where[0].lineno}" if where else ""
        message = f"{doing}: {type(exc).__name__}: {exc}{at}"
        now = time.time()
        self.last_error = ErrorRecord(now, self.task, message)
        if now - self._last_logged >= ERROR_LOG_INTERVAL:
            self._last_logged = now
            detail = log.isEnabledFor(logging.DEBUG) and not isinstance(exc, StreamflowError)
            log.warning("component %s task %d: %s (errors so far: %d)", self.component, self.task, message,
                        self.errors, exc_info=exc if detail else None)


@dataclass
class ComponentSummary:
    """The counters of all tasks of one component, summed."""

    component: str
    kind: str
    tasks: int = 0
    emitted: int = 0
    executed: int = 0
    acked: int = 0
    failed: int = 0
    replayed: int = 0
    errors: int = 0
    last_error: ErrorRecord | None = None

    def throughput(self, seconds: float) -> float:
        """Tuples per second: emitted for a spout, executed for a bolt."""
        done = self.emitted if self.kind == "spout" else self.executed
        return done / seconds if seconds > 0 else 0.0


def summarize(stats: Iterable[TaskStats], kinds: dict[str, str]) -> list[ComponentSummary]:
    """Sum task counters per component, in the order of ``kinds`` (component -> kind)."""
    summaries = {name: ComponentSummary(name, kind) for name, kind in kinds.items()}
    for s in stats:
        c = summaries[s.component]
        c.tasks += 1
        c.emitted += s.emitted
        c.executed += s.executed
        c.acked += s.acked
        c.failed += s.failed
        c.replayed += s.replayed
        c.errors += s.errors
        if s.last_error and (c.last_error is None or s.last_error.time > c.last_error.time):
            c.last_error = s.last_error
    return list(summaries.values())


def format_summary(summaries: list[ComponentSummary], seconds: float) -> str:
    """A fixed-width table: one row per component, then the last error of each that had one."""
    header = ("component", "kind", "tasks", "emitted", "executed", "acked", "failed", "tuples/s")
    rows = [header] + [
        (
            s.component, s.kind, str(s.tasks), str(s.emitted),
            "-" if s.kind == "spout" else str(s.executed),
            str(s.acked), str(s.failed), f"{s.throughput(seconds):,.0f}",
        )
        for s in summaries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)  # names left, numbers right
                  for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    for s in summaries:
        if s.last_error:
            lines.append(f"last error of {s.component} ({s.errors} in all): {s.last_error.message}")
    return "\n".join(lines)
