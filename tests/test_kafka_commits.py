"""The Kafka spout's commits (connectors/kafka/commits.py) against a stand-in consumer."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, TopicPartition
from streamflow_connectors.kafka import commits
from streamflow_connectors.kafka.assignment import Assignment
from streamflow_connectors.kafka.client import ClientErrors, KafkaClientError
from streamflow_connectors.kafka.commits import Commits
from test_kafka_fetcher import StandInConsumer


def committing(*taken: int, interval: float = 1.0) -> tuple[Commits, Any]:
    """Commits of partitions t/0.., each with records 0 .. ``taken`` - 1 in flight."""
    assignment = Assignment("wc-source", ["t"], None, 0, 1, "earliest")
    assignment.join({("t", p): 0 for p in range(len(taken))})
    assignment.assigned = list(assignment.partitions)
    for p, n in enumerate(taken):
        for offset in range(n):
            assignment.partitions["t", p].fetched(offset, f"record {offset}")
    return Commits(assignment, ClientErrors("127.0.0.1:9"), interval), cast(Any, StandInConsumer())


def done(c: Commits, partition: int, *offsets: int) -> None:
    for offset in offsets:
        c.assignment.partitions["t", partition].done(offset)


def test_a_commit_asks_for_the_points_that_moved() -> None:
    c, consumer = committing(3, 3)
    done(c, 0, 0, 2)  # 1 holds the point at 1
    assert c.commit(consumer) == [c.assignment.partitions["t", 0]]
    assert consumer.commits == [("t", 0, 1)]
    assert c.commit(consumer) == [] and consumer.commits == [("t", 0, 1)]  # asked once
    done(c, 1, 0, 1, 2)
    c.commit(consumer, keys=[])  # no partition
    c.commit(consumer, keys=[("t", 1)])
    assert consumer.commits == [("t", 0, 1), ("t", 1, 3)]


def test_periodic_commits_ask_for_what_moved_and_now_and_then_for_every_point(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commits, "RECOMMIT_INTERVAL", 100.0)
    c, consumer = committing(1, interval=1.0)
    done(c, 0, 0)
    start = c._next_again - 100.0  # the clock when it was made
    assert c.next_at <= start  # the first is due at once
    c.periodic(consumer, start)
    assert consumer.commits == [("t", 0, 1)] and c.next_at == start + 1.0
    c.periodic(consumer, start + 1.0)
    assert consumer.commits == [("t", 0, 1)]  # nothing moved
    c.periodic(consumer, start + 100.0)
    assert consumer.commits == [("t", 0, 1), ("t", 0, 1)]  # again, though it did not move
    c.periodic(consumer, start + 101.0)
    assert len(consumer.commits) == 2 and c.next_at == start + 102.0


def answer(partition: int, offset: int, error: KafkaError) -> Any:
    """A partition's answer to a commit, with its own error."""
    return SimpleNamespace(topic="t", partition=partition, offset=offset, error=error)


def test_answers_confirm_points_or_ask_for_them_again() -> None:
    c, consumer = committing(2, 2)
    done(c, 0, 0, 1)
    done(c, 1, 0, 1)
    c.commit(consumer)
    p0, p1 = c.assignment.partitions["t", 0], c.assignment.partitions["t", 1]
    refused = answer(1, 2, KafkaError(KafkaError.OFFSET_METADATA_TOO_LARGE))
    c.committed(None, [TopicPartition("t", 0, 2), refused, TopicPartition("gone", 0, 5)])
    assert (p0.committed, p0.commit_sent) == (2, 2) and (p1.committed, p1.commit_sent) == (0, 0)
    with pytest.raises(KafkaClientError, match="metadata"):
        c.errors.raise_last()
    c.commit(consumer)  # asked for again
    c.committed(KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE), [TopicPartition("t", 1, 2)])
    assert p1.committed == 0 and p1.commit_sent == 0
    with pytest.raises(KafkaClientError, match="Coordinator not available"):
        c.errors.raise_last()


@pytest.mark.parametrize("answers, error, warning", [
    (True, None, None),
    (True, KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE),
     "final commit of 1 partitions failed (Broker: Coordinator not available)"),
    (False, None, "final commit of 1 partitions failed (no answer within 0.05 s)"),
])
def test_a_final_commit_that_fails_is_a_warning(answers: bool, error: KafkaError | None, warning: str | None,
                                                caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commits, "COMMIT_WAIT", 0.05)
    c, consumer = committing(3)
    if answers:
        consumer.on_commit, consumer.commit_error = c.committed, error
    done(c, 0, 0, 1, 2)
    asyncio.run(c.final(consumer))
    assert consumer.commits == [("t", 0, 3)] and consumer.paused == {("t", 0)}
    warnings = [r.getMessage() for r in caplog.records if "final commit" in r.getMessage()]
    if warning is None:
        assert warnings == [] and c.assignment.partitions["t", 0].committed == 3
    else:
        assert len(warnings) == 1 and warning in warnings[0], warnings
