"""The topics of the Kafka connector tests: writing their input, reading what topologies wrote.

Input is written in big batches, except the last record of each partition, which goes in a
batch of its own: Tansu's high watermark is the base offset of a partition's last batch
plus one, so this keeps it right (see tests/kafka.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaBroker, KafkaRecord, Quiet


def produce(kafka: KafkaBroker, topic: str, values: Sequence[bytes], partitions: int) -> None:
    """Create ``topic`` and write ``values[i]`` to partition ``i % partitions``: in big
    batches, but each partition's last record in a batch of its own (so that Tansu's high
    watermark, and with it ``stop_at_end``, is right)."""
    kafka.create_topic(topic, partitions)
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "linger.ms": 5,
                         "batch.num.messages": 10_000, "logger": Quiet()})
    last = {i % partitions: i for i in range(len(values))}
    for i, value in enumerate(values):
        if last[i % partitions] != i:
            producer.produce(topic, value, partition=i % partitions)
            if len(producer) >= 50_000:
                producer.poll(0.01)  # let librdkafka's queue drain below its bound
    assert producer.flush(30) == 0
    for partition, i in sorted(last.items()):
        producer.produce(topic, values[i], partition=partition)
        assert producer.flush(10) == 0


SEAL = b"__seal__"


class TopicReader:
    """Reads a topic from the beginning, picking up where it stopped at each ``poll()``.

    Tansu serves records only up to its high watermark, the base offset of a partition's
    last batch + 1, so the records after the first of a last batch stay invisible until
    another batch lands. Each poll therefore first appends a one-record "seal" batch to
    every partition (records keyed :data:`SEAL`, left out of ``records``). Even so, a
    consumer that has read for a while sometimes never sees a few records that a new
    consumer reads at once (2 of 28,788 once, after a kill -9 mid-run): a poll that finds
    nothing new, :data:`REREAD_AFTER` seconds after the last start, reads the topic again
    from the beginning, keeping only records not seen before. It starts at offset 0 rather
    than at the offset the broker names as earliest: in one failure a partition was read
    from offset 17 on, never 0-16, and that lookup is one way it could happen. A real
    broker needs none of this.
    """

    REREAD_AFTER = 5.0

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.records: list[KafkaRecord] = []
        self._seen: set[tuple[int | None, int | None]] = set()  # (partition, offset)
        self._consumer: Consumer | None = None
        self._started = 0.0
        self._sealer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "logger": Quiet(),
                                 "message.timeout.ms": 2000})
        self._partitions: list[int] = []

    def _start(self) -> Consumer:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "streamflow-test-reader",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 100, "logger": Quiet(),
                             "auto.offset.reset": "earliest"})
        found = consumer.list_topics(timeout=10).topics.get(self.topic)
        assert found is not None and found.partitions, f"no topic {self.topic!r}"
        self._partitions = sorted(found.partitions)
        consumer.assign([TopicPartition(self.topic, p, 0) for p in self._partitions])
        return consumer

    def _seal(self) -> None:
        for partition in self._partitions:
            self._sealer.produce(self.topic, b"{}", SEAL, partition)
        self._sealer.flush(3)  # the broker may be away (an outage test): read what can be read

    def poll(self, wait: float = 0.1) -> list[KafkaRecord]:
        """The records that arrived since the last call (waiting up to ``wait`` s for one)."""
        if self._consumer is None:
            self._consumer = self._start()
            self._started = time.monotonic()
        self._seal()
        new: list[KafkaRecord] = []
        while True:
            got = [m for m in self._consumer.consume(20_000, timeout=wait) if m.error() is None]
            for m in got:
                if m.key() != SEAL and (m.partition(), m.offset()) not in self._seen:
                    self._seen.add((m.partition(), m.offset()))
                    new.append(KafkaRecord.of(m))
            if not got:
                break
            wait = 0.02
        self.records += new
        if not new and time.monotonic() - self._started >= self.REREAD_AFTER:
            self._consumer.close()
            self._consumer = None
        return new

    def describe(self) -> str:
        """Per partition: records read, gaps in their offsets, and the broker's low and high
        watermarks, to tell records never stored from records stored but not served."""
        offsets: dict[int, list[int]] = {}
        for record in self.records:
            offsets.setdefault(record.partition, []).append(record.offset)
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "streamflow-test-describe",
                             "logger": Quiet()})
        try:
            parts = []
            for partition, found in sorted(offsets.items()):
                found.sort()
                gaps = [(a + 1, b - 1) for a, b in zip(found, found[1:], strict=False) if b > a + 1]
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=5)
                parts.append(f"partition {partition}: {len(found)} read, offsets {found[0]}..{found[-1]}, "
                             f"gaps {gaps[:5]}, watermarks {low}..{high}")
                if found[0] > 0:  # ask once more for the first records, by offset
                    consumer.assign([TopicPartition(self.topic, partition, 0)])
                    first = consumer.poll(5)
                    served = "nothing" if first is None else first.error() or f"offset {first.offset()}"
                    parts[-1] += f", a fetch from offset 0 returns {served}"
            return "; ".join(parts)
        finally:
            consumer.close()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        self._sealer.purge()


def read_written(readers: Any, bootstrap: str, topic: str, count: int, timeout: float = 10.0) -> list[KafkaRecord]:
    """The records a topology wrote to ``topic``, sorted by partition and offset: those that
    arrived before ``count`` did or ``timeout`` s passed, so that a short count shows in the
    test's assertion. Read by a :class:`TopicReader`, which seals the partitions so that
    Tansu serves a last batch of several records (``KafkaBroker.consume_all`` does not: under
    load, it twice missed the 10 dead letters of one of two spout tasks)."""
    reader = readers(bootstrap, topic)
    deadline = time.monotonic() + timeout
    while len(reader.records) < count and time.monotonic() < deadline:
        reader.poll()
    return sorted(reader.records, key=lambda record: (record.partition, record.offset))


def header(record: Any, name: str) -> bytes | None:
    return next((bytes(v) for k, v in (record.headers or ()) if k == name), None)
