"""The Kafka test broker (tests/kafka.py, Tansu) does what the Kafka connectors and their
tests need.

The confluent-kafka (librdkafka) calls here are the ones the connectors make: manual
assignment at given offsets, bounded ``consume()`` batches, pause/resume and seek,
commits under a group id they never join, watermarks, metadata of every topic, batched
writes with acks=all and headers.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from cluster import wait_for
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka import KafkaBroker, KafkaRecord, KafkaStartError, Quiet, api_versions, moto_available


def consumer(kafka: KafkaBroker, group: str = "fixture-tests", **settings: Any) -> Consumer:
    return Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group, "enable.auto.commit": False,
                     "fetch.wait.max.ms": 100, "logger": Quiet(), **settings})


def take(c: Consumer, count: int, limit: int = 1000, timeout: float = 5) -> list[Any]:
    """Records from ``consume()`` batches of at most ``limit`` until ``count`` came (or
    ``timeout`` passed)."""
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        records += [m for m in c.consume(min(limit, count - len(records)), timeout=0.1) if m.error() is None]
    return records


def test_broker_answers_the_kafka_protocol(kafka: KafkaBroker) -> None:
    assert kafka.bootstrap == f"127.0.0.1:{kafka.port}"
    versions = api_versions("127.0.0.1", kafka.port)
    assert 0 in versions and 1 in versions  # Produce and Fetch
    assert 8 in versions and 9 in versions  # OffsetCommit and OffsetFetch
    assert 37 not in versions  # no CreatePartitions in Tansu 0.6


def test_round_trip(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}events"
    kafka.create_topic(topic, partitions=2)
    assert kafka.partitions(topic) == [0, 1]

    written = kafka.produce(topic, [b"a", "b", None], key="k", partition=0, headers=[("source", b"test")])
    written += kafka.produce(topic, ["c"], partition=1)
    assert written == [(0, 0), (0, 1), (0, 2), (1, 0)]

    records = kafka.consume_all(topic, count=4, timeout=10)
    assert [(r.partition, r.offset, r.key, r.value, r.headers) for r in records] == [
        (0, 0, b"k", b"a", (("source", b"test"),)),
        (0, 1, b"k", b"b", (("source", b"test"),)),
        (0, 2, b"k", None, (("source", b"test"),)),
        (1, 0, None, b"c", ()),
    ]
    assert all(isinstance(r, KafkaRecord) and r.topic == topic and r.timestamp > 0 for r in records)
    # Without a count it stops when nothing new arrives for `idle` seconds.
    assert kafka.consume_all(topic, idle=0.3, partitions=[1]) == records[3:]


def test_create_topic_reports_errors(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}t"
    kafka.create_topic(topic)
    with pytest.raises(KafkaException) as exists:
        kafka.create_topic(topic)
    assert exists.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    kafka.create_topic(topic, exist_ok=True)
    with pytest.raises(LookupError):
        kafka.consume_all(f"{topic_prefix}missing", timeout=1)


def test_produce_to_an_unknown_topic_creates_it(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}auto"
    [(partition, offset)] = kafka.produce(topic, [b"x"])
    assert offset == 0
    assert partition in kafka.partitions(topic)
    assert len(kafka.partitions(topic)) >= 1


def test_manual_assignment_bounded_batches_pause_and_seek(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}seek"
    kafka.create_topic(topic, partitions=2)
    kafka.produce(topic, [f"v{i}" for i in range(10)], partition=0)
    kafka.produce(topic, [f"w{i}" for i in range(3)], partition=1)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    c = consumer(kafka)
    try:
        c.assign([TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 0)])  # no JoinGroup
        first = take(c, 3, limit=3)  # consume(n) bounds one batch over all partitions together
        assert len(first) == 3
        rest = take(c, 13 - 4 - 3)
        assert sorted((m.partition(), m.offset()) for m in first + rest) == [(0, o) for o in range(4, 10)] + [
            (1, o) for o in range(3)]
        assert [tp.offset for tp in c.position([tp0, tp1])] == [10, 3]

        # The spout's rewind: pause (librdkafka drops what it fetched ahead), seek back to
        # the first record not taken, resume: reading goes on from there.
        c.pause([tp0])
        c.seek(TopicPartition(topic, 0, 1))
        assert take(c, 1, timeout=0.5) == []  # paused
        c.resume([tp0])
        assert [m.offset() for m in take(c, 9)] == list(range(1, 10))
    finally:
        c.close()


def test_commit_under_a_group_without_joining_it(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic, group = f"{topic_prefix}commits", f"{topic_prefix}group"
    kafka.create_topic(topic, partitions=3)
    kafka.produce(topic, [f"v{i}" for i in range(6)], partition=1)
    tp0, tp1, tp2 = (TopicPartition(topic, p) for p in range(3))
    answers: list[tuple[Any, list[TopicPartition]]] = []
    c = consumer(kafka, group, on_commit=lambda error, parts: answers.append((error, parts)))
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING), TopicPartition(topic, 1, OFFSET_BEGINNING)])
        assert c.committed([tp1], timeout=10)[0].offset < 0  # none yet
        c.commit(offsets=[TopicPartition(topic, 1, 4)], asynchronous=True)  # as the spout commits
        deadline = time.monotonic() + 5
        while not answers and time.monotonic() < deadline:
            take(c, 6, timeout=0.1)  # consume() serves the commit's answer
        [(error, [answered])] = answers
        assert error is None and (answered.partition, answered.offset, answered.error) == (1, 4, None)
        c.commit(offsets=[TopicPartition(topic, 1, 5), TopicPartition(topic, 0, 0)], asynchronous=False)
    finally:
        c.close()

    fresh = consumer(kafka, group)
    try:
        assert [tp.offset for tp in fresh.committed([tp0, tp1, tp2], timeout=10)][:2] == [0, 5]
        fresh.assign([tp1])  # no offset given: the committed one
        assert [m.offset() for m in take(fresh, 1)] == [5]
    finally:
        fresh.close()

    settings: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap, "logger": Quiet()}
    admin = AdminClient(settings)
    description = admin.describe_consumer_groups([group])[group].result(10)
    assert (description.group_id, description.members) == (group, [])  # nobody ever joined
    assert kafka.committed(group, topic) == {0: 0, 1: 5, 2: None}
    # ... and backwards too (a reset): a commit is a plain overwrite.
    kafka.commit(group, topic, {1: 2})
    assert kafka.committed(group, topic) == {0: 0, 1: 2, 2: None}


def test_end_offsets_are_right_with_one_record_per_batch(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}ends"
    kafka.create_topic(topic, partitions=2)
    assert kafka.end_offsets(topic) == {0: 0, 1: 0}
    kafka.produce(topic, [f"v{i}" for i in range(7)], partition=0)
    assert kafka.end_offsets(topic)[0] == 7

    # Batched sends: every delivery report has the record's own offset and every record
    # can be fetched; only the watermark is wrong on Tansu (the base offset of the last
    # batch + 1), so tests and the spout must not rely on it.
    written = kafka.produce(topic, [f"b{i}" for i in range(20)], partition=1, one_record_per_batch=False)
    assert written == [(1, offset) for offset in range(20)]
    assert [r.offset for r in kafka.consume_all(topic, count=20, partitions=[1])] == list(range(20))
    assert kafka.end_offsets(topic)[1] < 20

    # The watermark a fetch brings back (the spout's lag metric reads it, cached) is the same.
    kafka.produce(topic, ["last"], partition=1)  # alone in its batch: the watermark is right again
    c = consumer(kafka)
    try:
        c.assign([TopicPartition(topic, 1, 0)])
        assert len(take(c, 21)) == 21
        assert c.get_watermark_offsets(TopicPartition(topic, 1), cached=True)[1] == 21
    finally:
        c.close()


def test_batched_producer_with_acks_all_and_headers(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}batched"
    kafka.create_topic(topic, partitions=1)
    reports: list[tuple[Any, int]] = []
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "linger.ms": 10, "logger": Quiet(),
                         "on_delivery": lambda error, message: reports.append((error, message.offset()))})
    for i in range(50):
        producer.produce(topic, f"v{i}".encode(), b"k", headers=[("n", str(i).encode())])
    assert reports == []  # produce() only queues; reports come from poll() or flush()
    assert producer.flush(10) == 0
    assert reports == [(None, offset) for offset in range(50)]
    records = kafka.consume_all(topic, count=50)
    assert [r.headers for r in records] == [(("n", str(i).encode()),) for i in range(50)]


def test_librdkafkas_idempotent_producer_works(kafka: KafkaBroker, topic_prefix: str) -> None:
    # aiokafka's did not (InitProducerId failed); librdkafka's gets a producer id.
    topic = f"{topic_prefix}idempotent"
    kafka.create_topic(topic, partitions=1)
    reports: list[Any] = []
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True, "logger": Quiet()})
    producer.produce(topic, b"once", on_delivery=lambda error, message: reports.append(error))
    assert producer.flush(10) == 0 and reports == [None]
    assert [r.value for r in kafka.consume_all(topic, count=1)] == [b"once"]


def test_new_partitions_are_discovered_by_metadata_refresh(kafka: KafkaBroker, topic_prefix: str) -> None:
    # Tansu cannot add partitions to a topic (no CreatePartitions): re-create it instead.
    # Not while this consumer is assigned one of its partitions: librdkafka 2.16 then
    # crashes (SIGSEGV in rd_kafka_metadata_cache_find, its metadata thread) as soon as a
    # fetch finds the topic gone. The consumer reads another topic meanwhile.
    topic, other = f"{topic_prefix}grow", f"{topic_prefix}other"
    kafka.create_topic(topic, partitions=2)
    kafka.create_topic(other, partitions=1)
    c = consumer(kafka)
    try:
        assert sorted(c.list_topics(timeout=10).topics[topic].partitions) == [0, 1]
        c.assign([TopicPartition(other, 0, 0)])
        kafka.delete_topic(topic)
        kafka.create_topic(topic, partitions=4)
        # The spout asks for fresh metadata at each refresh (of every topic, or of its one topic), as here.
        wait_for(lambda: sorted(c.list_topics(timeout=10).topics[topic].partitions) == [0, 1, 2, 3], 5,
                 "the topic's four partitions", every=0.05)
    finally:
        c.close()


def test_kill_and_restart_on_the_same_port(tmp_path: Path) -> None:
    with KafkaBroker(tmp_path) as broker:
        port = broker.port
        broker.create_topic("t")
        broker.kill()
        assert not broker.is_running
        broker.start()
        assert broker.port == port
        assert broker.partitions("t") == []  # memory storage: the restart lost everything
        broker.restart()
        assert broker.port == port and broker.is_running
    assert not broker.is_running


def test_a_given_port_is_waited_for_and_a_port_that_stays_taken_is_reported(tmp_path: Path) -> None:
    with socket.socket() as holder:  # a listening socket: no server can bind the port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        broker = KafkaBroker(tmp_path, port=port, start_timeout=1)
        with pytest.raises(KafkaStartError, match=f"did not start on 127.0.0.1:{port}: port {port} is in use"):
            broker.start()
        assert not broker.is_running
    with broker:  # the port is free again: the same broker starts on it
        assert broker.port == port
        assert 18 in api_versions(broker.host, port)  # ApiVersions answers


@pytest.mark.skipif(
    not moto_available(),
    reason="moto's S3 server is not installed (pip install 'moto[s3]' flask flask-cors)",
)
def test_s3_storage_keeps_records_and_commits_across_restarts(tmp_path: Path) -> None:
    topic, group = "persisted", "spout-group"
    with KafkaBroker(tmp_path, persistent=True) as broker:
        assert broker.s3 is not None and broker.storage_url == "s3://tansu/"
        broker.create_topic(topic, partitions=2)
        broker.produce(topic, [f"v{i}" for i in range(5)], partition=0)
        broker.commit(group, topic, {0: 3})

        broker.kill()  # a crash: no clean shutdown
        broker.start()
        records = broker.consume_all(topic, count=5)
        assert [(r.partition, r.offset, r.value) for r in records] == [(0, i, f"v{i}".encode()) for i in range(5)]
        assert broker.committed(group, topic) == {0: 3, 1: None}

        broker.restart()  # a clean one
        assert broker.produce(topic, ["v5"], partition=0) == [(0, 5)]  # offsets go on
        assert [r.offset for r in broker.consume_all(topic, count=6)] == list(range(6))
        assert broker.committed(group, topic, [0]) == {0: 3}
        s3 = broker.s3
    assert not s3.is_running  # close() stopped the S3 server the broker started
