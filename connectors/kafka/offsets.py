"""Which offsets of a partition may be committed: pure bookkeeping, no I/O.

A record's offset is committed only once it and every record before it in its partition
are done (acked, or dead-lettered after its last retry). Offsets need not be contiguous
(compacted topics, transaction markers), so the commit point is the lowest offset still
in flight, or just past the highest offset fetched when none is.
"""

from __future__ import annotations

from typing import Any


class PartitionOffsets:
    """The in-flight records of one partition, keyed by offset.

    ``in_flight`` holds each emitted record that is not done yet (it is needed again to
    retry or dead-letter it). Records done past one still in flight cannot be committed
    either: :meth:`uncommitted` counts every offset from the commit point on, what a
    restart would read again, and the spout bounds it by pausing the partition.
    """

    __slots__ = ("committed", "fetched_to", "in_flight")

    def __init__(self, committed: int) -> None:
        self.committed = committed
        """The last offset committed to Kafka (the next record to read after a restart)."""
        self.fetched_to = committed
        """One past the highest offset fetched."""
        self.in_flight: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.in_flight)

    def fetched(self, offset: int, record: Any) -> None:
        """A record was fetched and is about to be emitted."""
        self.in_flight[offset] = record
        if offset >= self.fetched_to:
            self.fetched_to = offset + 1

    def done(self, offset: int) -> Any:
        """The record is acked or dead-lettered: it no longer holds the commit point back.
        Returns the record, or None if it was not in flight (a late duplicate ack)."""
        return self.in_flight.pop(offset, None)

    def record(self, offset: int) -> Any:
        return self.in_flight.get(offset)

    def commit_point(self) -> int:
        """The offset to commit: everything below it is done."""
        return min(self.in_flight) if self.in_flight else self.fetched_to

    def uncommitted(self) -> int:
        """How many offsets were fetched past the commit point (done or not)."""
        return self.fetched_to - self.commit_point()

    def to_commit(self) -> int | None:
        """The new commit point if it moved past the last commit, else None."""
        point = self.commit_point()
        return point if point > self.committed else None
