"""Which partitions a Kafka spout task reads and where it starts each
(connectors/kafka/assignment.py), against a stand-in consumer: no broker."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.admin import TopicMetadata
from streamflow_connectors.kafka.assignment import Assignment, Change, owner, partition_name, topic_problem


class Metadata:
    """The broker's answers: topics with their partition count and low and high watermarks
    (the same for every partition), and the group's committed offsets."""

    def __init__(self, topics: dict[str, int], low: int = 0, high: int = 100,
                 committed: dict[tuple[str, int], int] | None = None) -> None:
        self.topics, self.low, self.high, self.committed_offsets = topics, low, high, committed or {}

    def list_topics(self, topic: str | None, timeout: float) -> Any:
        found = {name: SimpleNamespace(partitions=dict.fromkeys(range(n)), error=None)
                 for name, n in self.topics.items() if topic is None or name == topic}
        return SimpleNamespace(topics=found)

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.committed_offsets.get((tp.topic, tp.partition), -1001))
                for tp in partitions]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return self.low, self.high


def change(assignment: Assignment, broker: Metadata) -> Change | None:
    return asyncio.run(assignment.change(cast(Any, broker)))


def test_a_partition_stays_with_its_task_when_partitions_or_topics_are_added() -> None:
    topics = [f"topic-{i}" for i in range(20)]
    for tasks in (1, 2, 3, 8):
        before = {(t, p): owner(t, p, tasks) for t in topics[:10] for p in range(6)}
        after = {(t, p): owner(t, p, tasks) for t in topics for p in range(12)}
        assert all(after[key] == task for key, task in before.items())
        for t in topics:  # each topic's partitions spread evenly over the tasks
            counts = Counter(owner(t, p, tasks) for p in range(12))
            assert len(counts) == min(tasks, 12) and max(counts.values()) - min(counts.values()) <= 1


def test_a_topic_error_is_quoted_as_the_broker_gives_it() -> None:
    # Tansu has no ACLs: the broker's answers are made here.
    def metadata(code: int | None) -> TopicMetadata:
        found = TopicMetadata()
        found.error = None if code is None else KafkaError(code)
        return found

    assert topic_problem("t", metadata(None)) is None
    assert topic_problem("t", None) == topic_problem("t", metadata(KafkaError.UNKNOWN_TOPIC_OR_PART)) == (
        "unknown topic 't'")
    assert topic_problem("t", metadata(KafkaError.TOPIC_AUTHORIZATION_FAILED)) == (
        "topic 't': Broker: Topic authorization failed")


def test_each_task_takes_its_share_and_starts_as_start_says() -> None:
    broker = Metadata({"t": 4}, low=5, high=50, committed={("t", 0): 20, ("t", 1): 2})
    found = {}
    for index in range(2):
        assignment = Assignment("wc-source", ["t"], None, index, 2, "latest")
        found[index] = change(assignment, broker)
    assert sorted(key for c in found.values() if c for key in c.mine) == [("t", p) for p in range(4)]
    starts = {key: start for c in found.values() if c for key, start in c.starts.items()}
    # committed (not below the log's start), else the latest offset
    assert starts == {("t", 0): 20, ("t", 1): 5, ("t", 2): 50, ("t", 3): 50}
    assert all(c is not None and c.ends == dict.fromkeys(c.mine, 50) and c.left == [] for c in found.values())


def test_partitions_found_later_start_at_their_earliest_and_gone_ones_leave() -> None:
    assignment = Assignment("wc-source", [], "p-.*", 0, 1, "latest")
    first = change(assignment, Metadata({"p-a": 1, "other": 3}, low=3, high=9))
    assert first is not None and first.mine == [("p-a", 0)] and first.starts == {("p-a", 0): 9}
    assignment.join(first.starts)
    assignment.assigned = first.mine
    assert change(assignment, Metadata({"p-a": 1})) is None  # nothing new
    later = change(assignment, Metadata({"p-b": 2}, low=3, high=9))  # p-a deleted, p-b created
    assert later is not None and later.mine == [("p-b", 0), ("p-b", 1)] and later.left == [("p-a", 0)]
    assert later.starts == {("p-b", 0): 3, ("p-b", 1): 3}  # found up to a refresh late: from the earliest


def test_an_unknown_topic_is_refused_with_the_brokers_reason() -> None:
    with pytest.raises(LookupError, match="unknown topic 'missing'"):
        change(Assignment("wc-source", ["t", "missing"], None, 0, 1, "earliest"), Metadata({"t": 1}))


def test_a_seek_restarts_the_partitions_and_keeps_the_others_for_later() -> None:
    assignment = Assignment("wc-source", ["t"], None, 0, 1, "earliest")
    assignment.join({("t", 0): 10})
    assignment.partitions["t", 0].fetched(10, "record")
    to = assignment.seek({"t/0": 4, "t/1": 7, "u/0": 1})
    assert to == {("t", 0): 4} and assignment.partitions["t", 0].fetched_to == 4
    assert not assignment.partitions["t", 0] and assignment.sought == {"t/1": 7, "u/0": 1}
    assert assignment.owns("t/1") and not assignment.owns("u/0")
    assignment.join({("t", 1): 0})  # joins at its sought position
    assert assignment.partitions["t", 1].fetched_to == 7 and assignment.sought == {"u/0": 1}
    assert assignment.seek({}) == {("t", 0): 10, ("t", 1): 0}  # missing: where the task started each


def test_partitions_that_leave_are_forgotten() -> None:
    assignment = Assignment("wc-source", ["t"], None, 0, 1, "earliest")
    assignment.join({("t", 0): 1, ("t", 1): 2})
    assignment.leave([("t", 1)])
    assert list(assignment.partitions) == list(assignment.started) == [("t", 0)]
    assert partition_name(("t", 0)) == "t/0"
    assert assignment.metrics() == {"kafka.committed_offset": {"partition=t/0": 1}, "kafka.uncommitted": {
        "partition=t/0": 0}, "kafka.retries": {"partition=t/0": 0}, "kafka.dead_letters": {"partition=t/0": 0}}
