"""Which records of a batch from the consumer the spout takes: bookkeeping only, no I/O.

librdkafka serves what it fetched ahead in batches (``consume()``), partitions mixed. Of
each partition, the spout takes the records below its limit (:func:`limit`) that it did
not take before; a record at or past the limit is left to be read again, and its
partition must be paused and sought back to its first record not taken (``consume()``
has moved past every record it returned). A partition with nothing in flight goes on
where its next record is, past a gap in its offsets or back at the start of a log that
was recreated (:meth:`.PartitionOffsets.skip_to`). :func:`take` makes these decisions
and updates each partition's bookkeeping; the fetcher does the I/O they call for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field

from confluent_kafka import KafkaError
from streamflow_connectors.kafka.offsets import Key, PartitionOffsets
from streamflow_connectors.kafka.records import Message

PAUSED = -1
"""The limit of a paused partition: it takes nothing, as what librdkafka still serves of
it was fetched before the pause and is read again after the seek that follows."""


def limit(offsets: PartitionOffsets, max_uncommitted: int, end: int | None = None) -> int:
    """The first offset of a partition the spout may not take yet: the bound on
    uncommitted offsets (``uncommitted()`` counts offsets from the commit point), or
    ``end``, the end offset to stop at, if lower."""
    bound = offsets.commit_point() + max_uncommitted
    return bound if end is None else min(bound, end)


@dataclass
class Intake:
    """What one batch comes to, for the fetcher to act on."""

    records: list[Message] = field(default_factory=list)
    """The records taken, in the order served: to emit."""
    size: int = 0
    """Their bytes (values and keys), for the quota."""
    rewind: set[Key] = field(default_factory=set)
    """Partitions with records left at or past their limit: to pause and seek back to
    their ``fetched_to``."""
    went_back: list[tuple[Key, int, int]] = field(default_factory=list)
    """Partitions that go on below what they had read up to, as (partition, offset it
    goes on at, offset it had read up to): a topic recreated or a log truncated."""
    errors: list[KafkaError] = field(default_factory=list)
    """Errors the batch carried (an unknown partition, say), for the spout to report."""


def take(messages: Iterable[Message], partitions: Mapping[Key, PartitionOffsets], paused: Set[Key],
         max_uncommitted: int, ends: Mapping[Key, int]) -> Intake:
    """Sort a batch: take the records each partition may take now, updating its
    bookkeeping (:meth:`~.PartitionOffsets.fetched`, ``skip_to``, ``served_to``), and say
    what is left to do. ``paused`` partitions take nothing; ``ends`` are the end offsets
    to stop at (``stop_at_end``). Records of partitions not in ``partitions`` (no longer
    assigned) are dropped. An end of partition (``_PARTITION_EOF``, asked for with
    ``stop_at_end``) marks the partition read up to it, unless records below it were left.
    A partition's limit is fixed at its first record in the batch."""
    intake = Intake()
    limits: dict[Key, int] = {}
    records, rewind = intake.records, intake.rewind
    size = 0
    for message in messages:
        error = message.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            intake.errors.append(error)  # librdkafka goes on: the spout only reports it
            continue
        key = (message.topic(), message.partition())
        offsets = partitions.get(key)
        if offsets is None:
            continue
        offset = message.offset()
        if error is not None:  # the partition's end
            if key not in paused and key not in rewind:
                offsets.served_to(offset)
            continue
        bound = limits.get(key)
        if bound is None:  # the partition's first record in this batch
            if offset != offsets.fetched_to and not offsets and key not in paused:
                if offset < offsets.fetched_to:
                    intake.went_back.append((key, offset, offsets.fetched_to))
                offsets.skip_to(offset)
            bound = limits[key] = PAUSED if key in paused else limit(offsets, max_uncommitted, ends.get(key))
        if offset < offsets.fetched_to:
            continue  # taken before (or a log that restarted lower while records were in flight)
        if offset >= bound:
            rewind.add(key)
            continue
        offsets.fetched(offset, message)
        records.append(message)
        size += len(message) + len(message.key() or b"")
    intake.size = size
    return intake
