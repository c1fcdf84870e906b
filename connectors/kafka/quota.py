"""Client quotas: a byte rate and a record rate per Kafka client id, as a broker enforces.

A :class:`Quota` is a token bucket for one spout task. A client id's quota holds for all
the tasks that share it: each of the ``n`` tasks gets ``1/n`` of the rate, so together
they never exceed it wherever they run. Over quota, the spout stops fetching for
:meth:`Quota.throttle_delay` seconds, as a broker delays a throttled client's responses,
and drops nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Rates = tuple[float | None, float | None]
"""(bytes/s, records/s); None: unlimited."""


@dataclass
class Quota:
    """Token buckets for bytes/s and records/s (None: unlimited), one second of burst
    (and room for at least one record, so that a rate below 1 record/s still flows)."""

    bytes_rate: float | None = None
    records_rate: float | None = None

    def __post_init__(self) -> None:
        self._bytes = self.bytes_rate or 0.0
        self._records = _records_burst(self.records_rate) if self.records_rate is not None else 0.0
        self._last: float | None = None
        self.throttled_seconds = 0.0
        self.consumed_bytes = 0
        self.consumed_records = 0

    def set_rates(self, bytes_rate: float | None, records_rate: float | None) -> None:
        """Change the rates of a running quota (tokens carry over, capped to the new burst)."""
        self.bytes_rate, self.records_rate = bytes_rate, records_rate
        if bytes_rate is not None:
            self._bytes = min(self._bytes, bytes_rate)
        if records_rate is not None:
            self._records = min(self._records, _records_burst(records_rate))

    def _refill(self, now: float) -> None:
        if self._last is not None:
            elapsed = now - self._last
            if self.bytes_rate is not None:
                self._bytes = min(self._bytes + elapsed * self.bytes_rate, self.bytes_rate)
            if self.records_rate is not None:
                self._records = min(self._records + elapsed * self.records_rate,
                                    _records_burst(self.records_rate))
        self._last = now

    def allowance(self, now: float) -> int | None:
        """How many records may be taken now (None: no record limit)."""
        self._refill(now)
        if self.records_rate is None:
            return None
        return int(self._records)

    def consume(self, records: int, size: int) -> None:
        """Charge what was taken; the buckets may go negative, and the debt delays the next fetch."""
        self.consumed_records += records
        self.consumed_bytes += size
        if self.records_rate is not None:
            self._records -= records
        if self.bytes_rate is not None:
            self._bytes -= size

    def throttle_delay(self, now: float) -> float:
        """Seconds to wait before fetching again: 0 when within quota (infinite under a
        rate of 0, which stops consumption until the rate changes)."""
        self._refill(now)
        delay = 0.0
        if self.records_rate is not None and self._records < 1:
            delay = max(delay, _wait(1 - self._records, self.records_rate))
        if self.bytes_rate is not None and (self._bytes < 0 or self.bytes_rate <= 0):
            delay = max(delay, _wait(-self._bytes, self.bytes_rate))
        return delay


def task_rates(quotas: Mapping[str, Mapping[str, Any]] | None, client_id: str, own: Rates, tasks: int) -> Rates:
    """One task's share of its client id's rates: the client id's entry in ``quotas`` (a
    topology's ``kafka.quotas``, ``{client_id: {"bytes_per_sec": B, "records_per_sec": R}}``),
    else ``own`` (the spout's), divided evenly among the component's ``tasks``."""
    quota = (quotas or {}).get(client_id)
    rates = own if quota is None else (quota.get("bytes_per_sec"), quota.get("records_per_sec"))
    bytes_rate, records_rate = (None if rate is None else float(rate) / tasks for rate in rates)
    return bytes_rate, records_rate


def _records_burst(rate: float) -> float:
    """The records bucket's size: one second's worth, and at least one record."""
    return max(rate, 1.0) if rate > 0 else 0.0


def _wait(missing: float, rate: float) -> float:
    """Seconds until a bucket filling at ``rate`` per second gains ``missing`` tokens."""
    return missing / rate if rate > 0 else math.inf
