"""How long to wait before trying again: one exponential back-off policy, no I/O.

Every retry loop in streamflow uses it: a link reconnecting to a peer, a Kafka client
reconnecting to a broker, a supervisor restarting a worker that keeps dying, a Kafka
record failed and retried later. Each keeps its own attempt count and asks this policy
for the delay.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt ``n`` (1-based): ``initial * multiplier**(n-1)``, at most ``maximum``."""

    initial: float = 0.5
    multiplier: float = 2.0
    maximum: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.multiplier < 1:
            raise ValueError(f"back-off needs 0 < initial <= maximum and multiplier >= 1, got {self}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt``; attempts below 1 count as the first."""
        try:
            return float(min(self.initial * self.multiplier ** (max(attempt, 1) - 1), self.maximum))
        except OverflowError:  # a float power past 1e308, after a thousand attempts or so
            return float(self.maximum)
