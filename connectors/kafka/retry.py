"""When to retry a failed record: the engine's exponential back-off with a retry limit, no I/O."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, TypeVar

from streamflow import backoff

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Backoff(backoff.Backoff):
    """How a Kafka spout retries a failed record: retry ``n`` (1-based) waits
    ``initial * multiplier**(n-1)`` seconds, at most ``maximum`` (the engine's
    :class:`streamflow.backoff.Backoff`), and after ``max_retries`` retries the record
    goes to the dead letters."""

    max_retries: int | None = 5
    """Retries before the record is dead-lettered; None retries forever."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, or None to retry forever, got {self.max_retries!r}")

    def exhausted(self, failures: int) -> bool:
        """True once a record has failed ``failures`` times and may not be retried again."""
        return self.max_retries is not None and failures > self.max_retries


@dataclass
class RetrySchedule(Generic[K]):
    """Failed keys waiting for their retry time, and how often each has failed."""

    backoff: Backoff
    failures: dict[K, int] = field(default_factory=dict)
    _due: list[tuple[float, int, K]] = field(default_factory=list)
    _seq: int = 0

    def failed(self, key: K, now: float) -> bool:
        """Record a failure. True if the key is scheduled for a retry, False if it has no
        retries left (the caller dead-letters it)."""
        n = self.failures.get(key, 0) + 1
        self.failures[key] = n
        if self.backoff.exhausted(n):
            return False
        self._seq += 1
        heapq.heappush(self._due, (now + self.backoff.delay(n), self._seq, key))
        return True

    def due(self, now: float, limit: int | None = None) -> list[K]:
        """Remove and return the keys whose retry time has come (at most ``limit``)."""
        ready: list[K] = []
        while self._due and self._due[0][0] <= now and (limit is None or len(ready) < limit):
            ready.append(heapq.heappop(self._due)[2])
        return ready

    def forget(self, key: K) -> None:
        """The key succeeded or was dead-lettered."""
        self.failures.pop(key, None)

    def drop(self, gone: Callable[[K], bool]) -> None:
        """Forget every key ``gone`` says, scheduled retries included (its partition left
        the task, say: its retries must not keep counting, nor hold ``len``)."""
        self.failures = {key: n for key, n in self.failures.items() if not gone(key)}
        self._due = [entry for entry in self._due if not gone(entry[2])]
        heapq.heapify(self._due)

    def unschedule(self) -> None:
        """Cancel every scheduled retry but keep the failure counts: after a seek back, the
        records are read again, and a record that fails again counts on from there."""
        self._due.clear()

    def scheduled(self) -> list[K]:
        """The keys waiting for their retry, in no order."""
        return [key for _, _, key in self._due]

    def __len__(self) -> int:
        return len(self._due)

    def next_due(self) -> float | None:
        return self._due[0][0] if self._due else None
