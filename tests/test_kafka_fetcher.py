"""The Kafka spout's fetching (connectors/kafka/fetcher.py) against a stand-in consumer.

For what Tansu cannot show: gaps in a partition's offsets (no retention, compaction or
transactions; DeleteRecords fails) and a log that restarts below what was read (a fetch
past its end gets no answer rather than OFFSET_OUT_OF_RANGE); and for the pauses and
seeks the fetcher asks of librdkafka, which a real consumer does not show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, TopicPartition
from streamflow_connectors.kafka.assignment import Assignment, Change
from streamflow_connectors.kafka.client import ClientErrors
from streamflow_connectors.kafka.fetcher import PAUSE_AFTER, PREFETCH_RECORDS, Fetcher
from streamflow_connectors.kafka.offsets import Key
from streamflow_connectors.kafka.quota import Quota
from test_kafka_intake import StandInMessage, record


class StandInConsumer:
    """Keeps what it was asked: pauses, resumes, seeks, commits, assignments; ``consume()``
    serves ``queue``. With ``on_commit``, ``consume()`` also answers the commits asked for
    since its last call, with ``commit_error`` (None: committed)."""

    def __init__(self) -> None:
        self.queue: list[StandInMessage] = []
        self.paused: set[Key] = set()
        self.seeks: list[tuple[str, int, int]] = []
        self.commits: list[tuple[str, int, int]] = []
        self.assigned: list[tuple[str, int, int]] = []
        self.high = -1
        self.on_commit: Callable[[KafkaError | None, list[TopicPartition]], None] | None = None
        self.commit_error: KafkaError | None = None
        self._unanswered: list[TopicPartition] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits += [(tp.topic, tp.partition, tp.offset) for tp in offsets]
        self._unanswered += offsets

    def consume(self, limit: int, timeout: float) -> list[StandInMessage]:
        if self.on_commit is not None and self._unanswered:
            answered, self._unanswered = self._unanswered, []
            self.on_commit(self.commit_error, answered)
        served, self.queue = self.queue[:limit], self.queue[limit:]
        return served

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in partitions]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        return -1, self.high


def fetching(*fetched_to: int, bound: int = 100, quota: Quota | None = None, stop_at_end: bool = False,
             fetch_records: int = 500) -> tuple[Fetcher, StandInConsumer]:
    """A fetcher of partitions t/0.. taken up to ``fetched_to``, nothing in flight."""
    assignment = Assignment("wc-source", ["t"], None, 0, 1, "earliest")
    assignment.join({("t", p): offset for p, offset in enumerate(fetched_to)})
    assignment.assigned = list(assignment.partitions)
    fetcher = Fetcher(assignment, quota or Quota(), ClientErrors("127.0.0.1:9"), fetch_records=fetch_records,
                      max_uncommitted=bound, stop_at_end=stop_at_end)
    consumer = StandInConsumer()
    fetcher.consumer = cast(Any, consumer)
    return fetcher, consumer


def buffered(fetcher: Fetcher) -> list[tuple[int, int]]:
    return [(m.partition(), m.offset()) for m in fetcher.buffer]


def test_the_prefetch_queue_holds_at_least_two_takes() -> None:
    assert fetching(0)[0].settings()["queued.min.messages"] == PREFETCH_RECORDS
    assert fetching(0, fetch_records=50_000)[0].settings()["queued.min.messages"] == 100_000


def test_an_idle_partition_reads_on_past_a_gap_wider_than_its_bound() -> None:
    # Committed at 100, and retention has deleted everything up to 5,000,000 since: the
    # bound counted from 100 used to rewind the partition to 100 for ever.
    fetcher, consumer = fetching(100, bound=10)
    fetcher.take(cast(list[Any], [record(0, 5_000_000), record(0, 5_000_001)]))
    assert buffered(fetcher) == [(0, 5_000_000), (0, 5_000_001)]
    assert consumer.seeks == [] and not consumer.paused
    assert fetcher.quota.consumed_records == 2 and fetcher.quota.consumed_bytes == 4


def test_a_partition_read_again_from_a_lower_offset_says_so(caplog: pytest.LogCaptureFixture) -> None:
    fetcher, consumer = fetching(1000)
    fetcher.take(cast(list[Any], [record(0, 0)]))  # the topic was recreated: its log starts at 0 again
    assert buffered(fetcher) == [(0, 0)] and consumer.seeks == []
    assert "wc-source: t/0 goes on at offset 0, below 1000" in caplog.text


def test_a_partition_at_its_bound_is_held_until_there_is_room() -> None:
    fetcher, consumer = fetching(0, 0, bound=3)
    consumer.queue = [record(0, offset) for offset in range(5)] + [record(1, 0)]
    fetcher.fetch(0.0)
    assert buffered(fetcher) == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert fetcher.held == {("t", 0)} and consumer.paused == {("t", 0)} and consumer.seeks == [("t", 0, 3)]
    fetcher.fetch(0.0)  # nothing done yet: still held
    assert consumer.paused == {("t", 0)}
    fetcher.assignment.partitions["t", 0].done(0)
    fetcher.fetch(0.0)
    assert not fetcher.held and not consumer.paused


def test_errors_in_a_batch_are_reported() -> None:
    fetcher, _ = fetching(0)
    fetcher.take(cast(list[Any], [record(0, 0, KafkaError.UNKNOWN_TOPIC_OR_PART)]))
    with pytest.raises(Exception, match="Kafka at 127.0.0.1:9: .*"):
        fetcher.errors.raise_last()


def test_a_short_throttle_leaves_the_records_to_librdkafka() -> None:
    fetcher, consumer = fetching(0, quota=Quota(records_rate=10))
    consumer.queue = [record(0, offset) for offset in range(30)]
    fetcher.fetch(0.0)
    assert len(fetcher.buffer) == 10  # one second's burst
    fetcher.buffer.clear()
    fetcher.fetch(0.05)  # over quota for 0.05 s: no take, no pause
    assert not fetcher.buffer and len(consumer.queue) == 20 and not consumer.paused


def test_a_long_throttle_pauses_every_partition_and_counts_its_time() -> None:
    fetcher, consumer = fetching(0, 0, quota=Quota(records_rate=0))
    fetcher.fetch(10.0)
    assert consumer.paused == {("t", 0), ("t", 1)} and PAUSE_AFTER < float("inf")
    fetcher.fetch(12.0)
    assert fetcher.metrics(12.5, "wc")["kafka.throttled_seconds"] == {"client_id=wc": 2.5}
    fetcher.quota.set_rates(None, None)
    fetcher.fetch(13.0)
    assert not consumer.paused and fetcher.quota.throttled_seconds == 3.0


def test_a_reassignment_resumes_every_partition_and_forgets_those_that_left() -> None:
    fetcher, consumer = fetching(0, 0, bound=1, stop_at_end=True)
    fetcher.end_offsets.update({("t", 0): 10, ("t", 1): 10})
    consumer.queue = [record(0, 0), record(1, 0), record(1, 1)]
    fetcher.fetch(0.0)
    assert fetcher.held == {("t", 1)} and consumer.paused == {("t", 1)}
    assignment = fetcher.assignment
    assignment.join({("t", 2): 5})
    assignment.leave([("t", 0)])
    fetcher.reassign(Change(mine=[("t", 1), ("t", 2)], starts={}, ends={("t", 1): 99, ("t", 2): 20},
                            left=[("t", 0)]))
    assert not consumer.paused and fetcher.held == {("t", 1)}
    assert buffered(fetcher) == [(1, 0)] and fetcher.end_offsets == {("t", 1): 10, ("t", 2): 20}
    assert consumer.assigned == [("t", 1, 1), ("t", 2, 5)]
    fetcher.fetch(0.0)  # pauses again what is held
    assert consumer.paused == {("t", 1)}


def test_a_restart_drops_what_is_buffered_and_reads_from_the_positions() -> None:
    fetcher, consumer = fetching(0, 0, bound=1)
    consumer.queue = [record(0, 0), record(0, 1), record(1, 0)]
    fetcher.fetch(0.0)
    assert fetcher.positions() == {("t", 0): 0, ("t", 1): 0}  # buffered: not emitted
    fetcher.buffer.popleft()  # emitted
    assert fetcher.positions() == {("t", 0): 1, ("t", 1): 0}
    assert fetcher.metrics(0.0, "wc")["kafka.in_flight"] == 1
    fetcher.restart({("t", 0): 0, ("t", 1): 0})
    assert not fetcher.buffer and not fetcher.held and not consumer.paused
    assert consumer.assigned == [("t", 0, 0), ("t", 1, 0)]


def test_the_lag_is_the_high_watermark_less_the_committed_offset() -> None:
    fetcher, consumer = fetching(4)
    assert fetcher.metrics(0.0, "wc")["kafka.lag"] == {}  # no watermark seen yet
    consumer.high = 10
    assert fetcher.metrics(0.0, "wc")["kafka.lag"] == {"partition=t/0": 6}
