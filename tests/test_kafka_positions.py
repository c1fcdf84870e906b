"""KafkaSpout's positions for checkpointed state (``position`` and ``seek``), against a real
broker (Tansu, tests/kafka.py), and the bookkeeping they rest on.

Each spout here is opened and driven by the test itself (:class:`Driven`), without the
engine: the test plays the engine's part, taking positions at a "barrier", acking what a
committed checkpoint covers, and failing then seeking at a "rollback".
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from kafka import KafkaBroker
from streamflow_connectors.kafka import Backoff, KafkaSpout
from streamflow_connectors.kafka.assignment import owner
from streamflow_connectors.kafka.client import KafkaClientError
from streamflow_connectors.kafka.deadletters import DeadLetters
from streamflow_connectors.kafka.offsets import PartitionOffsets
from streamflow_connectors.kafka.retry import RetrySchedule
from topics import header, produce

from streamflow import TaskContext

MsgId = tuple[str, int, int]
NO_RETRY_DUE = Backoff(initial=3600, maximum=3600, max_retries=2)
"""Retries never due within a test: only a seek emits a failed record again."""


class Driven:
    """A KafkaSpout opened as task ``index`` of ``tasks`` of component ``source`` and driven
    by the test on an event loop of its own; the message ids it emits go to ``emitted``."""

    def __init__(self, spout: KafkaSpout, topology: str, index: int = 0, tasks: int = 1) -> None:
        self.spout = spout
        self.emitted: list[MsgId] = []
        spout.emit = lambda values, stream="default", msg_id=None: self.emitted.append(msg_id)
        self.loop = asyncio.new_event_loop()
        context = TaskContext(topology, "source", index + 1, {"source": tuple(range(1, tasks + 1))})
        self.loop.run_until_complete(spout.open({}, context))

    def until(self, condition: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
        """Call ``next_tuple`` until ``condition()`` holds; fail after ``timeout`` seconds.
        Client errors are what the engine would show in status: the spout retries them."""
        deadline = time.monotonic() + timeout
        error = None
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last error: {error})")
            try:
                self.loop.run_until_complete(self.spout.next_tuple())
            except KafkaClientError as exc:
                error = exc
            self.loop.run_until_complete(asyncio.sleep(0.001))

    def read_to(self, key: tuple[str, int], end: int) -> None:
        """Drive until the partition is taken up to ``end`` and nothing waits to be emitted."""
        self.until(lambda: (p := self.spout._assignment.partitions.get(key)) is not None and p.fetched_to >= end
                   and not self.spout._fetcher.buffer, f"{key} read up to {end}")

    def since(self, mark: int, key: tuple[str, int]) -> list[int]:
        """The offsets of ``key`` emitted since ``len(emitted)`` was ``mark``."""
        return [offset for topic, partition, offset in self.emitted[mark:] if (topic, partition) == key]

    def close(self) -> None:
        self.loop.run_until_complete(self.spout.close())
        self.loop.close()


@pytest.fixture
def drive() -> Iterator[Callable[..., Driven]]:
    """``drive(spout, topology, index=0, tasks=1)``: a :class:`Driven` spout, closed after the test."""
    made: list[Driven] = []

    def make(spout: KafkaSpout, topology: str, index: int = 0, tasks: int = 1) -> Driven:
        made.append(Driven(spout, topology, index, tasks))
        return made[-1]

    yield make
    for driven in made:
        driven.close()


def records(n: int) -> list[bytes]:
    return [json.dumps({"n": i}).encode() for i in range(n)]


def test_the_position_is_the_next_offset_to_emit_not_past_buffered_records(kafka: KafkaBroker, topic_prefix: str,
                                                                          drive: Callable[..., Driven]) -> None:
    topic = f"{topic_prefix}in"
    produce(kafka, topic, records(200), partitions=2)
    driven = drive(KafkaSpout(kafka.bootstrap, [topic], backoff=NO_RETRY_DUE, fetch_records=7), "positions")
    spout = driven.spout
    driven.until(lambda: len(driven.emitted) >= 20 and all(driven.since(0, (topic, p)) for p in (0, 1))
                 and spout._fetcher.buffer, "20 records emitted, of both partitions, more buffered")
    emitted = {p: len(driven.since(0, (topic, p))) for p in (0, 1)}
    assert spout.position() == {f"{topic}/0": emitted[0], f"{topic}/1": emitted[1]}
    # Taken from the consumer, not emitted: not counted.
    assert any(spout._assignment.partitions[topic, p].fetched_to > emitted[p] for p in (0, 1))
    # A record waiting for its retry is emitted again from the position.
    [first_of_0, *_] = driven.since(0, (topic, 0))
    spout.fail((topic, 0, first_of_0))
    assert len(spout._redelivery.retries) == 1
    assert spout.position() == {f"{topic}/0": first_of_0, f"{topic}/1": emitted[1]}


def test_each_task_gives_the_positions_of_its_own_partitions(kafka: KafkaBroker, topic_prefix: str,
                                                            drive: Callable[..., Driven]) -> None:
    topic, tasks = f"{topic_prefix}in", 2
    produce(kafka, topic, records(40), partitions=4)
    positions = []
    for index in range(tasks):
        driven = drive(KafkaSpout(kafka.bootstrap, [topic]), "shares", index, tasks)
        mine = [(topic, p) for p in range(4) if owner(topic, p, tasks) == index]
        for key in mine:
            driven.read_to(key, 10)
        positions.append(driven.spout.position())
        assert positions[-1] == {f"{t}/{p}": 10 for t, p in mine}
    assert not positions[0].keys() & positions[1].keys()
    assert positions[0].keys() | positions[1].keys() == {f"{topic}/{p}" for p in range(4)}


def test_seeking_back_emits_again_the_records_from_there_in_order(kafka: KafkaBroker, topic_prefix: str,
                                                                 drive: Callable[..., Driven]) -> None:
    topic = f"{topic_prefix}in"
    produce(kafka, topic, records(60), partitions=2)
    driven = drive(KafkaSpout(kafka.bootstrap, [topic], backoff=NO_RETRY_DUE, fetch_records=7), "seek-back")
    spout = driven.spout
    driven.until(lambda: len(driven.emitted) >= 15, "15 records emitted")
    checkpoint = spout.position()
    driven.until(lambda: len(driven.emitted) >= 40 and spout._fetcher.buffer, "40 records emitted, more buffered")
    last = driven.emitted[-1]
    spout.fail(last)  # fails at the rollback: scheduled for a retry, which the seek drops
    mark = len(driven.emitted)
    spout.seek(checkpoint)
    retries = spout._redelivery.retries
    assert not spout._fetcher.buffer and len(retries) == 0 and retries.failures == {last: 1}
    assert spout.position() == checkpoint
    for p in (0, 1):
        driven.read_to((topic, p), 30)
    for p in (0, 1):
        assert driven.since(mark, (topic, p)) == list(range(checkpoint[f"{topic}/{p}"], 30))


def test_a_partition_missing_from_the_positions_goes_back_to_where_the_task_started_it(
        kafka: KafkaBroker, topic_prefix: str, drive: Callable[..., Driven]) -> None:
    topic = f"{topic_prefix}in"
    produce(kafka, topic, records(20), partitions=1)
    kafka.commit("missing-source", topic, {0: 5})  # the group's committed offset: where the task starts
    driven = drive(KafkaSpout(kafka.bootstrap, [topic], commit_interval=0.05), "missing")
    spout, key = driven.spout, (topic, 0)
    driven.until(lambda: len(driven.emitted) >= 5, "5 records emitted")
    assert driven.since(0, key)[:5] == [5, 6, 7, 8, 9]
    for msg_id in driven.emitted[:5]:
        spout.ack(msg_id)
    driven.until(lambda: spout._assignment.partitions[key].committed == 10, "the commit of offset 10 confirmed")
    mark = len(driven.emitted)
    spout.seek({f"{topic}-other/0": 3})  # another topic's partition: not this task's
    driven.read_to(key, 20)
    assert driven.since(mark, key) == list(range(5, 20))
    assert spout._assignment.partitions[key].commit_sent == 10  # the Kafka commit does not go back


def test_positions_given_before_the_assignment_apply_when_the_partitions_are_assigned(
        kafka: KafkaBroker, topic_prefix: str, drive: Callable[..., Driven]) -> None:
    topic, tasks = f"{topic_prefix}in", 2
    produce(kafka, topic, records(80), partitions=4)
    checkpoint = {f"{topic}/{p}": 3 + p for p in range(4)}
    for index in range(tasks):
        driven = drive(KafkaSpout(kafka.bootstrap, [topic]), "early", index, tasks)
        mine = [p for p in range(4) if owner(topic, p, tasks) == index]
        driven.spout.seek({**checkpoint, "elsewhere/0": 1})  # at open: nothing is assigned yet
        assert driven.spout._assignment.assigned is None
        # A checkpoint taken before the assignment keeps the positions sought.
        assert driven.spout.position() == {f"{topic}/{p}": 3 + p for p in mine}
        for p in mine:
            driven.read_to((topic, p), 20)
            assert driven.since(0, (topic, p)) == list(range(3 + p, 20))
        assert driven.spout.position() == {f"{topic}/{p}": 20 for p in mine}


def test_a_record_failed_past_its_retries_across_seeks_is_dead_lettered_and_the_rest_flow_on(
        kafka: KafkaBroker, topic_prefix: str, drive: Callable[..., Driven]) -> None:
    topic, dlq, poison = f"{topic_prefix}in", f"{topic_prefix}dlq", 4
    produce(kafka, topic, records(10), partitions=1)
    kafka.create_topic(dlq, 1)
    driven = drive(KafkaSpout(kafka.bootstrap, [topic], backoff=NO_RETRY_DUE, dead_letter_topic=dlq,
                              commit_interval=0.05), "poison")
    spout, key = driven.spout, (topic, 0)
    spout.seek({})  # the start of a stateful topology with nothing committed yet
    checkpoint = spout.position()
    assert checkpoint == {}  # nothing assigned yet, nothing sought
    for attempt in range(1, NO_RETRY_DUE.max_retries + 2):  # one try and max_retries retries, each rolled back
        mark = len(driven.emitted)
        driven.read_to(key, 10)
        assert driven.since(mark, key) == list(range(10)), attempt
        spout.fail((topic, 0, poison))  # the rollback: its tree failed; the other records are forgotten
        spout.seek(checkpoint)
        assert not spout._redelivery.dead, attempt  # the last failure's dead letter is taken back: read again
    mark = len(driven.emitted)
    driven.read_to(key, 10)
    assert driven.since(mark, key) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    for msg_id in driven.emitted[mark:]:
        spout.ack(msg_id)  # the next checkpoint commits
    driven.until(lambda: spout._assignment.partitions[key].committed == 10, "the commit past the dead letter")
    assert spout.metrics()["kafka.dead_letters"] == {f"partition={topic}/0": 1}
    [dead] = kafka.consume_all(dlq)
    assert header(dead, "origin.offset") == str(poison).encode()
    assert header(dead, "error") == f"failed {NO_RETRY_DUE.max_retries + 1} times".encode()
    assert kafka.committed("poison-source", topic) == {0: 10}


def test_acks_after_a_seek_advance_the_kafka_commit(kafka: KafkaBroker, topic_prefix: str,
                                                    drive: Callable[..., Driven]) -> None:
    topic = f"{topic_prefix}in"
    produce(kafka, topic, records(30), partitions=1)
    driven = drive(KafkaSpout(kafka.bootstrap, [topic], commit_interval=0.05), "acks")
    spout, key = driven.spout, (topic, 0)
    driven.until(lambda: len(driven.emitted) >= 10, "10 records emitted")
    checkpoint = spout.position()
    assert checkpoint == {f"{topic}/0": 10}
    for msg_id in driven.emitted[:10]:
        spout.ack(msg_id)  # the checkpoint commits
    driven.until(lambda: len(driven.emitted) >= 20 and spout._assignment.partitions[key].committed == 10,
                 "10 more records emitted, the commit of offset 10 confirmed")
    mark = len(driven.emitted)
    spout.seek(checkpoint)  # a rollback: records 10-19 are forgotten, never acked
    driven.read_to(key, 30)
    assert driven.since(mark, key) == list(range(10, 30))
    for msg_id in driven.emitted[mark:]:
        spout.ack(msg_id)
    driven.until(lambda: spout._assignment.partitions[key].committed == 30, "the commit of offset 30 confirmed")
    assert kafka.committed("acks-source", topic) == {0: 30}


def test_a_dead_letter_confirmed_after_a_seek_does_not_finish_the_record_read_again(
        kafka: KafkaBroker, topic_prefix: str, drive: Callable[..., Driven]) -> None:
    topic = f"{topic_prefix}in"
    produce(kafka, topic, records(10), partitions=1)
    driven = drive(KafkaSpout(kafka.bootstrap, [topic]), "late-letter")
    spout, key = driven.spout, (topic, 0)
    driven.read_to(key, 10)
    before = spout._assignment.partitions[key].record(3)  # as the dead-letter path would hold it
    spout.seek({f"{topic}/0": 0})
    driven.read_to(key, 10)
    again = spout._assignment.partitions[key].record(3)
    assert again is not None and again is not before
    spout._redelivery.dead_lettered(before)  # the delivery report of a dead letter written before the seek
    partition = spout._assignment.partitions[key]
    assert partition.record(3) is again and partition.commit_point() == 0


# -- the bookkeeping under position and seek, no broker ------------------------------------


def test_a_partition_restarted_lower_does_not_commit_below_what_it_asked_for() -> None:
    p = PartitionOffsets(10)
    for offset in range(10, 20):
        p.fetched(offset, f"record@{offset}")
    for offset in range(10, 15):
        p.done(offset)
    p.commit_asked(p.to_commit() or -1)
    assert p.commit_sent == 15
    p.restart_at(12)
    assert len(p) == 0 and p.fetched_to == p.commit_point() == 12 and p.uncommitted() == 0
    assert p.to_commit() is None and p.commit_sent == 15  # 12 is below what was asked for
    for offset in range(12, 17):
        p.fetched(offset, f"record@{offset}")
        p.done(offset)
    assert p.to_commit() == 17


def test_unscheduled_retries_keep_their_failure_counts() -> None:
    schedule: RetrySchedule[str] = RetrySchedule(Backoff(initial=1, max_retries=2))
    assert schedule.failed("a", 0) and schedule.due(1) == ["a"]
    assert schedule.failed("a", 10) and schedule.failed("b", 10)
    assert sorted(schedule.scheduled()) == ["a", "b"]
    schedule.unschedule()
    assert len(schedule) == 0 and schedule.scheduled() == [] and schedule.due(100) == []
    assert schedule.failures == {"a": 2, "b": 1}
    assert not schedule.failed("a", 20)  # the third failure: past max_retries


class Letter:
    """A record on the dead-letter path, as much of it as dropping it asks for."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def test_dead_letters_not_written_yet_can_be_taken_back() -> None:
    done: list[Any] = []
    dead = DeadLetters("127.0.0.1:9", None, "taken-back", None, done.append)  # no topic: dropped when sent
    letters = [Letter(offset) for offset in range(5)]
    for letter in letters:
        dead.add(cast(Any, letter), "failed 3 times")
    dead.drop(lambda message: message.offset() >= 3)
    assert len(dead) == 3
    dead.send()
    assert done == letters[:3] and not dead
