"""Which offsets of a partition may be committed: pure bookkeeping, no I/O.

A record's offset is committed only once it and every record before it in its partition
are done (acked, or dead-lettered after its last retry). Offsets need not be contiguous
(compacted topics, transaction markers), so the commit point is the lowest offset still
in flight, or just past the highest offset fetched when none is.
"""

from __future__ import annotations

from typing import Any

Key = tuple[str, int]
"""A partition: (topic, partition number)."""


WALK = 64
"""Offsets :meth:`PartitionOffsets.commit_point` steps over before it takes the minimum
of those in flight instead."""


class PartitionOffsets:
    """The records of one partition taken from the consumer and not done yet, by offset.

    ``in_flight`` holds each record from the moment the spout takes it from the consumer
    (buffered to be emitted, emitted, waiting for a retry or for the dead-letter topic)
    until it is done: it is needed again to retry or dead-letter it. Records done past one
    still in flight cannot be committed either: :meth:`uncommitted` counts every offset
    from the commit point on, what a restart would read again, and the spout bounds it by
    pausing the partition.

    A commit is asked for (``commit_sent``) before the broker confirms it (``committed``):
    a point is asked for once, and asked for again only if that commit failed.
    """

    __slots__ = ("commit_sent", "committed", "dead_letters", "fetched_to", "in_flight", "retries", "_low")

    def __init__(self, committed: int) -> None:
        self.committed = committed
        """The last offset the broker confirmed as committed (the next record to read
        after a restart)."""
        self.commit_sent = committed
        """The last offset a commit was asked for."""
        self.fetched_to = committed
        """One past the highest offset taken from the consumer."""
        self.in_flight: dict[int, Any] = {}
        self.retries = 0
        """Records emitted again after a failure (one per retry)."""
        self.dead_letters = 0
        """Records sent down the dead-letter path (past their retries, or undecodable)."""
        self._low = committed
        """No offset below it is in flight: where :meth:`commit_point` looks from."""

    def __len__(self) -> int:
        return len(self.in_flight)

    def fetched(self, offset: int, record: Any) -> None:
        """A record was taken from the consumer, to be emitted."""
        self.in_flight[offset] = record
        if offset >= self.fetched_to:
            self.fetched_to = offset + 1
        if offset < self._low:  # read again below (a log that went back)
            self._low = offset

    def done(self, offset: int) -> Any:
        """The record is acked or dead-lettered: it no longer holds the commit point back.
        Returns the record, or None if it was not in flight (a late duplicate ack)."""
        return self.in_flight.pop(offset, None)

    def record(self, offset: int) -> Any:
        return self.in_flight.get(offset)

    def commit_point(self) -> int:
        """The offset to commit: everything below it is done.

        The spout asks for it at each fetch, with up to ``max_uncommitted`` records in
        flight: it walks up from the last point found, a few offsets at a time (records
        are done about in order), and takes the minimum only past a gap of more than
        :data:`WALK` offsets (a compacted topic)."""
        in_flight = self.in_flight
        if not in_flight:
            return self.fetched_to
        start = self._low
        for low in range(start, start + WALK):
            if low in in_flight:
                break
        else:
            low = min(in_flight)
        self._low = low
        return low

    def uncommitted(self) -> int:
        """How many offsets were fetched past the commit point (done or not)."""
        return self.fetched_to - self.commit_point()

    def to_commit(self, again: bool = False) -> int | None:
        """The new commit point if it moved past the last one asked for, else None; with
        ``again``, the point whether it moved or not (to keep a broker from expiring it)."""
        point = self.commit_point()
        return point if point > self.commit_sent or again else None

    def commit_asked(self, offset: int) -> None:
        """A commit of ``offset`` was sent to the broker."""
        self.commit_sent = max(self.commit_sent, offset)

    def commit_confirmed(self, offset: int) -> None:
        """The broker confirmed a commit of ``offset`` (answers may come out of order)."""
        self.committed = max(self.committed, offset)

    def skip_to(self, offset: int) -> None:
        """Nothing is in flight and the consumer's next record is at ``offset``, not at
        ``fetched_to``: the log goes on there.

        Past ``fetched_to``, the offsets between hold no record (deleted by retention,
        compacted away, a transaction's control or aborted records): the bound on
        uncommitted offsets, which counts offsets from the commit point, must count from
        ``offset``, or a gap wider than the bound would hold the partition for ever.
        Before ``fetched_to``, the log was truncated or the topic recreated, and the
        consumer reads it again from its start: the commit points go back with it, or no
        commit would be asked for until the new log passed the old point."""
        assert not self.in_flight, "skip_to with records in flight"
        self.fetched_to = self._low = offset
        if offset < self.commit_sent:
            self.commit_sent = self.committed = offset

    def restart_at(self, offset: int) -> None:
        """The spout reads the partition again from ``offset`` (a seek, to a checkpoint's
        position): what was in flight is forgotten, and the commit point and the bound
        count from ``offset``. The commits asked for and confirmed stay: a commit never
        goes back, and one below them is not asked for."""
        self.in_flight = {}
        self.fetched_to = self._low = offset

    def served_to(self, offset: int) -> None:
        """The consumer served every record below ``offset`` (it reported the partition's
        end there): any offsets between ``fetched_to`` and it hold records that never reach
        the spout (a transaction's control records), so the partition is read up to it."""
        self.fetched_to = max(self.fetched_to, offset)

    def commit_failed(self) -> None:
        """A commit failed: ask again for the current point at the next commit."""
        self.commit_sent = self.committed


def start_offset(committed: int, low: int, high: int, reset: str) -> int:
    """Where reading a partition starts: its ``committed`` offset, but not below the log's
    start ``low`` (retention deleted what lies between, and a fetch there would be out of
    range); with none committed (``committed < 0``), ``low`` or ``high`` as ``reset``
    says (``"earliest"`` or ``"latest"``)."""
    if committed >= 0:
        return max(committed, low)
    return low if reset == "earliest" else high
