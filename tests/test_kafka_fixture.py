"""The Kafka test broker (tests/kafka.py, Tansu) does what the Kafka spout and its tests need.

The aiokafka calls here are the ones the engine's spout makes: manual assignment, seek,
batched fetches, pause/resume, commits under a group id it never joins, partition discovery.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from kafka import KafkaBroker, KafkaRecord, api_versions, moto_available


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
    from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

    topic = f"{topic_prefix}t"
    kafka.create_topic(topic)
    with pytest.raises(TopicAlreadyExistsError):
        kafka.create_topic(topic)
    kafka.create_topic(topic, exist_ok=True)
    with pytest.raises(UnknownTopicOrPartitionError):
        kafka.consume_all(f"{topic_prefix}missing", timeout=1)


def test_produce_to_an_unknown_topic_creates_it(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}auto"
    [(partition, offset)] = kafka.produce(topic, [b"x"])
    assert offset == 0
    assert partition in kafka.partitions(topic)
    assert len(kafka.partitions(topic)) >= 1


def test_manual_assignment_seek_and_batched_fetch(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}seek"
    kafka.create_topic(topic, partitions=2)
    kafka.produce(topic, [f"v{i}" for i in range(10)], partition=0)
    kafka.produce(topic, [f"w{i}" for i in range(3)], partition=1)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)

    async def scenario() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap,
            client_id="streamflow-test-spout",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        try:
            consumer.assign([tp0, tp1])
            consumer.seek(tp0, 4)
            consumer.seek(tp1, 0)
            # max_records bounds one getmany() over all partitions together.
            got = await consumer.getmany(tp0, timeout_ms=2000, max_records=3)
            assert [m.offset for m in got[tp0]] == [4, 5, 6]
            assert await consumer.position(tp0) == 7

            consumer.pause(tp0)
            assert consumer.paused() == {tp0}
            got = await consumer.getmany(timeout_ms=2000)
            assert set(got) == {tp1} and [m.value for m in got[tp1]] == [b"w0", b"w1", b"w2"]
            consumer.resume(tp0)
            got = await _fetch_until(consumer, tp0, 3)
            assert [m.value for m in got] == [b"v7", b"v8", b"v9"]

            consumer.seek(tp0, 1)  # back in time, as a spout replaying a failed record
            got = await _fetch_until(consumer, tp0, 9)
            assert [m.offset for m in got] == list(range(1, 10))
        finally:
            await consumer.stop()

    asyncio.run(scenario())


async def _fetch_until(
    consumer: AIOKafkaConsumer, tp: TopicPartition, count: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """Fetch from one partition until ``count`` records came (or 5 s passed)."""
    messages: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + 5
    while len(messages) < count and time.monotonic() < deadline:
        got = await consumer.getmany(tp, timeout_ms=500)
        messages.extend(got.get(tp, []))
    return messages


def test_commit_under_a_group_without_joining_it(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic, group = f"{topic_prefix}commits", f"{topic_prefix}group"
    kafka.create_topic(topic, partitions=3)
    kafka.produce(topic, [f"v{i}" for i in range(6)], partition=1)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)

    async def scenario() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap,
            group_id=group,
            client_id="streamflow-test-spout",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            consumer.assign([tp0, tp1])  # assign(), not subscribe(): no JoinGroup
            assert await consumer.committed(tp1) is None
            await consumer.commit({tp1: OffsetAndMetadata(4, "")})
            assert await consumer.committed(tp1) == 4
            await consumer.commit({tp1: OffsetAndMetadata(5, "")})  # commits move forward...
            await consumer.commit({tp0: OffsetAndMetadata(0, "")})
        finally:
            await consumer.stop()

        fresh = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False)
        await fresh.start()
        try:
            fresh.assign([tp0, tp1, TopicPartition(topic, 2)])
            assert await fresh.committed(tp1) == 5
            assert await fresh.committed(tp0) == 0
            assert await fresh.committed(TopicPartition(topic, 2)) is None
            # With no committed offset a consumer starts at auto_offset_reset; with one, there.
            assert await fresh.position(tp1) == 5
        finally:
            await fresh.stop()

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            [description] = await admin.describe_consumer_groups([group])
            [(error_code, group_id, state, *_rest, members)] = description.groups
            assert (error_code, group_id, members) == (0, group, [])  # nobody ever joined
            # The admin call works when given the partitions (without, aiokafka cannot
            # decode Tansu's answer).
            offsets = await admin.list_consumer_group_offsets(group, partitions=[tp1])
            assert offsets[tp1].offset == 5
        finally:
            await admin.close()

    asyncio.run(scenario())
    # ... and backwards too (a reset): a commit is a plain overwrite.
    kafka.commit(group, topic, {1: 2})
    assert kafka.committed(group, topic) == {0: 0, 1: 2, 2: None}


def test_end_offsets_are_right_with_one_record_per_batch(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}ends"
    kafka.create_topic(topic, partitions=2)
    assert kafka.end_offsets(topic) == {0: 0, 1: 0}
    kafka.produce(topic, [f"v{i}" for i in range(7)], partition=0)
    assert kafka.end_offsets(topic)[0] == 7

    # Batched sends: every future resolves with the record's own offset once the broker
    # acks, and every record can be fetched; only the watermark may be wrong on Tansu (the
    # base offset of the last batch + 1), so tests and the spout must not rely on it.
    written = kafka.produce(topic, [f"b{i}" for i in range(20)], partition=1, one_record_per_batch=False)
    assert written == [(1, offset) for offset in range(20)]
    assert [r.offset for r in kafka.consume_all(topic, count=20, partitions=[1])] == list(range(20))


def test_batched_producer_with_acks_all_and_headers(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}batched"
    kafka.create_topic(topic, partitions=1)

    async def scenario() -> list[int]:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap,
            client_id="streamflow-test-bolt",
            acks="all",
            linger_ms=10,
            max_batch_size=64 * 1024,
        )
        await producer.start()
        try:
            futures = [
                await producer.send(topic, f"v{i}".encode(), key=b"k", headers=[("n", str(i).encode())])
                for i in range(50)
            ]
            assert not all(future.done() for future in futures)  # send() only queues
            results = await asyncio.gather(*futures)
            return [metadata.offset for metadata in results]
        finally:
            await producer.stop()

    assert asyncio.run(scenario()) == list(range(50))
    records = kafka.consume_all(topic, count=50)
    assert [r.headers for r in records] == [(("n", str(i).encode()),) for i in range(50)]


def test_new_partitions_are_discovered_by_metadata_refresh(kafka: KafkaBroker, topic_prefix: str) -> None:
    # Tansu cannot add partitions to a topic (no CreatePartitions): re-create it instead.
    topic = f"{topic_prefix}grow"
    kafka.create_topic(topic, partitions=2)

    async def scenario() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap, enable_auto_commit=False, metadata_max_age_ms=300
        )
        await consumer.start()
        try:
            # Nothing assigned: the client's metadata covers every topic.
            assert consumer.partitions_for_topic(topic) == {0, 1}
            consumer.assign([TopicPartition(topic, 0)])  # now it tracks this topic only
            await kafka.delete_topic_async(topic)
            await kafka.create_topic_async(topic, partitions=4)
            deadline = time.monotonic() + 5
            while consumer.partitions_for_topic(topic) != {0, 1, 2, 3}:
                assert time.monotonic() < deadline, consumer.partitions_for_topic(topic)
                await asyncio.sleep(0.05)
        finally:
            await consumer.stop()

    asyncio.run(scenario())


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
