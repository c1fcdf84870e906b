"""Which records of a batch the Kafka spout takes (connectors/kafka/intake.py): no broker."""

from __future__ import annotations

from typing import Any, cast

from confluent_kafka import KafkaError
from streamflow_connectors.kafka.intake import PAUSED, Intake, limit, take
from streamflow_connectors.kafka.offsets import Key, PartitionOffsets


class StandInMessage:
    """A record, or an event with ``error``, as ``Consumer.consume()`` returns them."""

    def __init__(self, topic: str, partition: int, offset: int, error: KafkaError | None = None,
                 key: bytes | None = None) -> None:
        self._topic, self._partition, self._offset, self._error, self._key = topic, partition, offset, error, key

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return b"{}"

    def __len__(self) -> int:
        return 2


def record(partition: int, offset: int, error: int | None = None, key: bytes | None = None) -> StandInMessage:
    """A record of topic ``t``."""
    return StandInMessage("t", partition, offset, None if error is None else KafkaError(error), key)


def end(partition: int, offset: int) -> StandInMessage:
    return record(partition, offset, KafkaError._PARTITION_EOF)


def reading(*fetched_to: int) -> dict[Key, PartitionOffsets]:
    """Partitions t/0.. read up to ``fetched_to``, nothing in flight."""
    return {("t", p): PartitionOffsets(offset) for p, offset in enumerate(fetched_to)}


def sort(records: list[StandInMessage], partitions: dict[Key, PartitionOffsets], paused: set[Key] | None = None,
         bound: int = 100, ends: dict[Key, int] | None = None) -> Intake:
    return take(cast(list[Any], records), partitions, paused or set(), bound, ends or {})


def offsets(intake: Intake) -> list[tuple[int, int]]:
    return [(m.partition(), m.offset()) for m in intake.records]


def test_the_limit_is_the_uncommitted_bound_or_the_end_if_lower() -> None:
    p = PartitionOffsets(10)
    for offset in range(10, 15):
        p.fetched(offset, None)
    p.done(10)
    assert limit(p, 100) == 111  # counted from the commit point, 11
    assert limit(p, 100, end=50) == 50
    assert limit(p, 100, end=500) == 111


def test_records_below_the_limit_are_taken_in_the_order_served() -> None:
    partitions = reading(0, 5)
    intake = sort([record(0, 0), record(1, 5), record(0, 1, key=b"k"), record(1, 6)], partitions)
    assert offsets(intake) == [(0, 0), (1, 5), (0, 1), (1, 6)]
    assert intake.size == 4 * 2 + 1 and not intake.rewind and not intake.errors
    assert partitions["t", 0].fetched_to == 2 and len(partitions["t", 0]) == 2
    assert partitions["t", 1].fetched_to == 7


def test_records_past_the_bound_are_left_and_their_partition_rewound() -> None:
    partitions = reading(0, 0)
    intake = sort([record(0, offset) for offset in range(5)] + [record(1, 0)], partitions, bound=3)
    assert offsets(intake) == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert intake.rewind == {("t", 0)}
    assert partitions["t", 0].fetched_to == 3  # where the fetcher seeks it back to


def test_the_end_offset_to_stop_at_is_a_limit_too() -> None:
    partitions = reading(0)
    intake = sort([record(0, offset) for offset in range(4)], partitions, ends={("t", 0): 2})
    assert offsets(intake) == [(0, 0), (0, 1)] and intake.rewind == {("t", 0)}


def test_a_paused_partition_takes_nothing_and_is_rewound() -> None:
    # What librdkafka still serves of a paused partition was fetched before the pause.
    partitions = reading(0, 0)
    intake = sort([record(0, 0), record(1, 0)], partitions, paused={("t", 0)})
    assert offsets(intake) == [(1, 0)] and intake.rewind == {("t", 0)}
    assert partitions["t", 0].fetched_to == 0
    assert PAUSED < 0


def test_records_taken_before_are_dropped() -> None:
    partitions = reading(0)
    partitions["t", 0].fetched(0, None)  # in flight: no skip, the partition goes on at 1
    intake = sort([record(0, 0), record(0, 1)], partitions)
    assert offsets(intake) == [(0, 1)] and not intake.rewind


def test_an_idle_partition_goes_on_past_a_gap_wider_than_its_bound() -> None:
    # Committed at 100, and retention deleted everything up to 5,000,000 since: the bound
    # counted from 100 would rewind the partition to 100 for ever.
    partitions = reading(100)
    intake = sort([record(0, 5_000_000), record(0, 5_000_001)], partitions, bound=10)
    assert offsets(intake) == [(0, 5_000_000), (0, 5_000_001)] and not intake.rewind
    assert partitions["t", 0].commit_point() == 5_000_000 and not intake.went_back


def test_a_partition_read_again_from_a_lower_offset_says_so() -> None:
    partitions = reading(1000)
    intake = sort([record(0, 0)], partitions)  # the topic was recreated: its log starts at 0 again
    assert offsets(intake) == [(0, 0)] and intake.went_back == [(("t", 0), 0, 1000)]
    assert partitions["t", 0].to_commit() is None  # the commit point went back to 0 with it
    partitions["t", 0].done(0)
    assert partitions["t", 0].to_commit() == 1


def test_a_partition_with_records_in_flight_does_not_skip() -> None:
    partitions = reading(10)
    partitions["t", 0].fetched(10, None)
    intake = sort([record(0, 20)], partitions)  # a gap: taken, but the commit point stays at 10
    assert offsets(intake) == [(0, 20)] and partitions["t", 0].commit_point() == 10


def test_the_end_of_a_partition_marks_it_read_to_there() -> None:
    # 99 is a transaction's commit marker, which librdkafka never serves.
    partitions = reading(0)
    intake = sort([*(record(0, offset) for offset in range(99)), end(0, 100)], partitions, bound=1000)
    assert len(intake.records) == 99 and not intake.errors
    assert partitions["t", 0].fetched_to == 100


def test_the_end_of_a_partition_with_records_left_is_ignored() -> None:
    partitions = reading(0, 0)
    sort([record(0, 0), record(0, 1), end(0, 5), end(1, 5)], partitions, paused={("t", 1)}, bound=1)
    assert partitions["t", 0].fetched_to == 1  # offset 1 was left: not read to the end
    assert partitions["t", 1].fetched_to == 0  # paused


def test_errors_are_kept_and_unassigned_partitions_dropped() -> None:
    partitions = reading(0)
    intake = sort([record(0, 0, KafkaError.UNKNOWN_TOPIC_OR_PART), record(7, 0), record(0, 0)], partitions)
    assert [e.code() for e in intake.errors] == [KafkaError.UNKNOWN_TOPIC_OR_PART]
    assert offsets(intake) == [(0, 0)] and list(partitions) == [("t", 0)]


def test_an_empty_batch_takes_nothing() -> None:
    partitions = reading(3)
    assert sort([], partitions) == Intake() and partitions["t", 0].fetched_to == 3
