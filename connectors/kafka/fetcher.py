"""The spout's fetching: what it takes from librdkafka's queue, and which partitions it
pauses.

librdkafka (see :mod:`.client`) fetches ahead in its own threads, and the fetcher takes
records from its queue with ``consume(timeout=0)``, which never blocks the event loop.
A partition pauses at its bound on uncommitted offsets (or its end, with ``stop_at_end``)
and resumes once there is room; every partition pauses while the spout is over its quota
for long. Pausing a partition in librdkafka drops what it fetched ahead for it; the
fetcher then seeks the partition back to the first offset it did not take, so that
nothing is skipped when it resumes.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import Any, cast

from confluent_kafka import Consumer, TopicPartition
from streamflow_connectors.kafka import intake
from streamflow_connectors.kafka.assignment import Assignment, Change
from streamflow_connectors.kafka.client import ClientErrors
from streamflow_connectors.kafka.offsets import Key
from streamflow_connectors.kafka.quota import Quota
from streamflow_connectors.kafka.records import Message

log = logging.getLogger(__name__)

PAUSE_AFTER = 1.0
"""Seconds over quota after which the fetcher pauses every partition. A shorter throttle
only stops taking records: librdkafka fetches ahead up to a bound (``queued.min.messages``)
and then stops asking the broker, and a pause would cost more than it saves, as a resumed
partition waits for the fetch under way (up to ``fetch.wait.max.ms``) before its next one,
and fetches again what the pause dropped."""
FETCH_WAIT_MS = 100
"""How long the broker may hold a fetch when there is nothing new (librdkafka's default,
500 ms, is also how long a resumed partition may wait for its first record)."""
PREFETCH_RECORDS = 20_000
"""Records per partition librdkafka keeps fetched ahead (``queued.min.messages``). Once a
fetch leaves a partition's queue above it, librdkafka waits ``fetch.queue.backoff.ms``
(1 s) before it fetches that partition again, so the queue must hold more than a second's
worth of records, or the spout finds it empty while the topic still holds records and its
worker idles (bench/kafka_wordcount.py shows the effect). librdkafka's bound on queued
bytes (``queued.max.messages.kbytes``, 64 MiB) still holds for large records."""


class Fetcher:
    """Takes records from the consumer into ``buffer`` (taken, not emitted yet), within the
    quota and below each partition's limit (:mod:`.intake`), and keeps librdkafka's paused
    partitions (``paused``) to what the spout wants: those ``held`` at their limit, or
    every one while over quota. ``end_offsets`` are the ends to stop at with
    ``stop_at_end``: the high watermarks seen when each partition joined first."""

    def __init__(self, assignment: Assignment, quota: Quota, errors: ClientErrors, *, fetch_records: int,
                 max_uncommitted: int, stop_at_end: bool) -> None:
        self.assignment, self.quota, self.errors = assignment, quota, errors
        self.fetch_records, self.max_uncommitted, self.stop_at_end = fetch_records, max_uncommitted, stop_at_end
        self.consumer: Consumer | None = None
        self.buffer: deque[Message] = deque()
        self.end_offsets: dict[Key, int] = {}
        self.paused: set[Key] = set()
        self.held: set[Key] = set()
        """Partitions at their limit: paused until there is room again."""
        self._throttled_since: float | None = None

    def settings(self) -> dict[str, Any]:
        """The consumer's librdkafka settings for fetching: a short wait at the end of the
        log, records fetched ahead (at least two takes' worth), ends of partitions reported
        when the spout stops at them, and broker throttles counted.

        ``auto.offset.reset`` is ``earliest`` whatever the spout's ``start`` says: each
        partition gets its start offset from :mod:`.assignment`, so the reset only applies
        to a fetch out of range (retention deleted records past the position of a paused
        partition, a truncated log, a recreated topic), where reading on from the earliest
        record left loses none of those left, as ``latest`` would."""
        return {"fetch.wait.max.ms": FETCH_WAIT_MS, "enable.partition.eof": self.stop_at_end,
                "queued.min.messages": max(2 * self.fetch_records, PREFETCH_RECORDS),
                "auto.offset.reset": "earliest", "throttle_cb": self.broker_throttled}

    def fetch(self, now: float) -> None:
        """Take what librdkafka fetched ahead, within quota, from partitions below their
        limit; pause and resume partitions to match."""
        assert self.consumer is not None
        throttled_for = self._throttled(now)
        if self.held:
            partitions = self.assignment.partitions
            self.held = {key for key in self.held if self._limit(key) <= partitions[key].fetched_to}
        paused_by_quota = throttled_for >= PAUSE_AFTER
        self.pause(set(self.assignment.assigned or ()) if paused_by_quota else self.held)
        if throttled_for and not paused_by_quota:
            return  # leave the records to librdkafka's bounded queue until the quota allows
        allowance = None if throttled_for else self.quota.allowance(now)
        limit = self.fetch_records if allowance is None else max(1, min(self.fetch_records, allowance))
        # Called while paused by the quota too: consume() also serves commit answers and
        # errors, and returns no record then.
        self.take(cast(list[Message], self.consumer.consume(limit, timeout=0)))

    def take(self, messages: list[Message]) -> None:
        """Buffer the records of a batch that may be taken (:func:`.intake.take`); pause
        and rewind the partitions whose records went past their limit."""
        if not messages:
            return
        taken = intake.take(messages, self.assignment.partitions, self.paused, self.max_uncommitted,
                            self.end_offsets)
        for error in taken.errors:
            self.errors(error)
        for (topic, partition), offset, read_to in taken.went_back:
            log.warning("%s: %s/%d goes on at offset %d, below %d, which it had read up to: the topic was "
                         "recreated or its log truncated", self.assignment.name, topic, partition, offset, read_to)
        self.buffer.extend(taken.records)
        self.quota.consume(len(taken.records), taken.size)
        if taken.rewind:
            self._rewind(taken.rewind)

    def _rewind(self, keys: set[Key]) -> None:
        """Pause partitions whose records went past their limit (those at their bound are
        held until there is room again) and seek each back to its first record not taken:
        consume() moved past the records it returned."""
        assert self.consumer is not None
        self.held |= keys - self.paused
        self.pause(self.paused | keys)
        partitions = self.assignment.partitions
        for topic, partition in keys:
            self.consumer.seek(TopicPartition(topic, partition, partitions[topic, partition].fetched_to))

    def _limit(self, key: Key) -> int:
        return intake.limit(self.assignment.partitions[key], self.max_uncommitted, self.end_offsets.get(key))

    def pause(self, wanted: set[Key]) -> None:
        """Pause exactly the ``wanted`` partitions in librdkafka (which stops fetching them
        and drops what it fetched ahead for them)."""
        assert self.consumer is not None
        if wanted == self.paused:
            return
        pause, resume = wanted - self.paused, self.paused - wanted
        if pause:
            self.consumer.pause([TopicPartition(t, p) for t, p in pause])
        if resume:
            self.consumer.resume([TopicPartition(t, p) for t, p in resume])
        self.paused = set(wanted)

    def _throttled(self, now: float) -> float:
        """How long the client id has been over quota, counting its total throttled time,
        or how long it will be if longer (a rate of 0 is over quota for ever); 0 when
        within quota. Over quota, fetching stops, as a broker delays a throttled client."""
        delay = self.quota.throttle_delay(now)
        if delay > 0:
            if self._throttled_since is None:
                self._throttled_since = now
            return max(delay, now - self._throttled_since)
        if self._throttled_since is not None:
            self.quota.throttled_seconds += now - self._throttled_since
            self._throttled_since = None
        return 0.0

    def _throttled_seconds(self, now: float) -> float:
        """Seconds the client id was throttled, by the quota (the throttle under way
        included) or by a broker."""
        since = self._throttled_since
        return self.quota.throttled_seconds + (0.0 if since is None else now - since)

    def broker_throttled(self, event: Any) -> None:
        """A broker delayed this client under a broker-side quota (``throttle_cb``)."""
        self.quota.throttled_seconds += float(event.throttle_time)

    # -- assignment and seeks ---------------------------------------------------------

    def reassign(self, change: Change) -> None:
        """Read the partitions of ``change`` from now on, each from its first offset not
        taken (the assignment's bookkeeping has joined and left them already). The ends
        seen first stay the ends to stop at; the records waiting to be emitted of those
        that left go.

        Every paused partition is resumed first: librdkafka keeps a partition paused across
        ``assign()`` (librdkafka 2.16, measured), so one paused by the fetcher, which then
        counted it unpaused, would stay paused for ever. The next :meth:`fetch` pauses
        again what is at its limit or over quota."""
        assert self.consumer is not None
        if self.stop_at_end:
            for key, end in change.ends.items():
                self.end_offsets.setdefault(key, end)
        self.pause(set())
        if change.left:
            gone = set(change.left)
            for key in gone:
                self.end_offsets.pop(key, None)
            self.held -= gone
            self.buffer = deque(m for m in self.buffer if (m.topic(), m.partition()) not in gone)
        partitions = self.assignment.partitions
        self.consumer.assign([TopicPartition(t, p, partitions[t, p].fetched_to) for t, p in change.mine])

    def restart(self, to: Mapping[Key, int]) -> None:
        """Read each assigned partition again from ``to``: what is buffered is dropped, and
        nothing is held."""
        self.buffer.clear()
        self.held = set()
        if self.consumer is not None:
            self.pause(set())  # librdkafka keeps a partition paused across assign(): see join
            self.consumer.assign([TopicPartition(t, p, to[t, p]) for t, p in self.assignment.assigned or ()])

    # -- what the spout reports -------------------------------------------------------

    def positions(self) -> dict[Key, int]:
        """The first offset of each partition not emitted yet: buffered records count as
        not emitted."""
        at = {key: offsets.fetched_to for key, offsets in self.assignment.partitions.items()}
        for message in self.buffer:
            key = (message.topic(), message.partition())
            if message.offset() < at.get(key, -1):
                at[key] = message.offset()
        return at

    def read_to_end(self) -> bool:
        """Whether every partition was read up to its end offset."""
        partitions = self.assignment.partitions
        return all(partitions[key].fetched_to >= end for key, end in self.end_offsets.items())

    def metrics(self, now: float, client_id: str | None) -> dict[str, Any]:
        """``kafka.lag`` per partition, what the client id consumed and how long it was
        throttled, and ``kafka.in_flight``: records emitted and not done."""
        client = f"client_id={client_id}"
        return {
            "kafka.lag": self._lag(),
            "kafka.consumed_records": {client: self.quota.consumed_records},
            "kafka.consumed_bytes": {client: self.quota.consumed_bytes},
            "kafka.throttled_seconds": {client: round(self._throttled_seconds(now), 3)},
            "kafka.in_flight": sum(len(p) for p in self.assignment.partitions.values()) - len(self.buffer),
        }

    def _lag(self) -> dict[str, int]:
        """High watermark minus committed offset per assigned partition whose watermark is
        known (librdkafka's cached value: no request to the broker)."""
        lag = {}
        if self.consumer is not None:
            for topic, partition in self.assignment.assigned or ():
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                committed = self.assignment.partitions[topic, partition].committed
                if high >= 0:
                    lag[f"partition={topic}/{partition}"] = max(high - committed, 0)
        return lag
