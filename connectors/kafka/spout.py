"""KafkaSpout: reads Kafka with commit-after-ack, retries, dead letters and client quotas.

Each task is assigned its share of the topics' partitions explicitly (task ``i`` of ``n``
takes every ``n``-th partition in (topic, partition) order): no consumer-group rebalances
inside a topology. A record's offset is committed, under the spout's group id, only when
it and every earlier record of its partition are done (see :mod:`.offsets`), so a worker
that dies resumes from the committed offsets: nothing is lost, and duplicates are bounded
by what was uncommitted, itself bounded per partition (``max_uncommitted``; at the bound
the partition pauses).

A failed tuple is retried with exponential backoff (:mod:`.retry`); after its last retry,
or at once when its value cannot be decoded, the record goes to the dead-letter topic
with its origin in headers, or is counted and dropped if no topic is set. An unreachable
broker or unknown topic is an error in ``status`` and the logs, retried with backoff
until it recovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from typing import Any, Callable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from streamflow_connectors.kafka.offsets import PartitionOffsets
from streamflow_connectors.kafka.quota import Quota
from streamflow_connectors.kafka.records import (
    DEFAULT_FIELDS,
    UndecodableRecord,
    decoder,
    default_values,
)
from streamflow_connectors.kafka.retry import Backoff, RetrySchedule

from streamflow import AsyncSpout, TaskContext

log = logging.getLogger(__name__)

MsgId = tuple[str, int, int]  # topic, partition, offset
CONNECT_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)
DEFAULT_BACKOFF = Backoff()
COMMIT_TIMEOUT = 5.0
"""Seconds a commit may take: aiokafka retries a commit for as long as the broker is away,
and the spout must not hang in it (nor in ``close``) without a word."""


class KafkaSpout(AsyncSpout):
    """Emits Kafka records as tuples; see the module docstring for the guarantees.

    ``topics`` is a list of names, or ``topic_pattern`` a regular expression matched
    against the broker's topics. ``group_id`` (offsets) and ``client_id`` (quotas) default
    to ``<topology>-<component>``. Without ``record_to_values`` each tuple has
    :data:`~.records.DEFAULT_FIELDS` with the value decoded as ``value_format``; with it,
    the function gets the raw :class:`aiokafka.ConsumerRecord` and returns the values of
    ``fields``. Topology config can override: ``kafka.stop_at_end`` (stop at the end
    offsets seen at start, so local mode finishes) and ``kafka.quotas``
    (``{client_id: {"bytes_per_sec": B, "records_per_sec": R}}``, also changeable on a
    running topology). A quota, given here or in ``kafka.quotas``, is the client id's: each
    of the component's ``n`` tasks takes ``1/n`` of it.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Sequence[str] = (),
        *,
        topic_pattern: str | None = None,
        group_id: str | None = None,
        client_id: str | None = None,
        start: str = "earliest",
        value_format: str = "json",
        record_to_values: Callable[[ConsumerRecord], Sequence[Any]] | None = None,
        fields: Sequence[str] = DEFAULT_FIELDS,
        commit_interval: float = 1.0,
        max_uncommitted: int = 10_000,
        backoff: Backoff = DEFAULT_BACKOFF,
        dead_letter_topic: str | None = None,
        stop_at_end: bool = False,
        bytes_per_sec: float | None = None,
        records_per_sec: float | None = None,
        metadata_refresh: float = 30.0,
        fetch_records: int = 500,
    ) -> None:
        if bool(topics) == bool(topic_pattern):
            raise ValueError("KafkaSpout needs topics or a topic_pattern, not both")
        if start not in ("earliest", "latest"):
            raise ValueError(f"start must be 'earliest' or 'latest', got {start!r}")
        decoder(value_format)  # refuse an unknown format now, not in a worker
        self.bootstrap_servers = bootstrap_servers
        self.topics = list(topics)
        self.topic_pattern = topic_pattern
        self.group_id, self.client_id = group_id, client_id
        self.start, self.value_format = start, value_format
        self.record_to_values = record_to_values
        self.outputs = list(fields)
        self.commit_interval, self.max_uncommitted = commit_interval, max_uncommitted
        self.backoff, self.dead_letter_topic = backoff, dead_letter_topic
        self.stop_at_end = stop_at_end
        self.quota_rates = (bytes_per_sec, records_per_sec)
        self.metadata_refresh, self.fetch_records = metadata_refresh, fetch_records

    # -- lifecycle --------------------------------------------------------------------

    async def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self._name = f"{context.topology}-{context.component}"
        self.group_id = self.group_id or self._name
        self.client_id = self.client_id or self._name
        self._index, self._tasks = context.task_index, context.parallelism
        self.stop_at_end = bool(config.get("kafka.stop_at_end", self.stop_at_end))
        self.quota = Quota(*self._rates(config))
        self._decode = decoder(self.value_format)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[TopicPartition, PartitionOffsets] = {}
        self._assigned: list[TopicPartition] = []
        self._end_offsets: dict[TopicPartition, int] = {}
        self._buffer: deque[ConsumerRecord] = deque()
        self._retries: RetrySchedule[MsgId] = RetrySchedule(self.backoff)
        self._dead: list[tuple[ConsumerRecord, str]] = []
        self._connect_attempts = 0
        self._next_connect = 0.0
        self._next_commit = self._next_refresh = 0.0
        self.dead_lettered = self.dropped = 0
        self._throttled_since: float | None = None
        self._rotation = 0

    def deactivate(self) -> None:
        """Commit what is acked now: ``next_tuple``, which commits, is not called while
        the topology is inactive."""
        if self._consumer is not None:
            self._final_commit = asyncio.get_running_loop().create_task(self._commit_quietly())

    async def _commit_quietly(self) -> None:
        try:
            await self._commit()
        except Exception as exc:
            log.warning("%s: commit on deactivation failed: %s", self._name, exc)

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """Apply ``kafka.quotas`` for this spout's client id (at open and on a change)."""
        if getattr(self, "quota", None) is None:
            return  # not open yet: open() reads the changed config
        self.quota.set_rates(*self._rates(config))

    def _rates(self, config: Mapping[str, Any]) -> tuple[float | None, float | None]:
        """This task's (bytes/s, records/s): the client id's entry in ``kafka.quotas``, else
        the constructor's rates, shared evenly by the component's tasks."""
        quotas = config.get("kafka.quotas") or {}
        if not isinstance(quotas, Mapping):
            raise ValueError(f"kafka.quotas must be an object {{client id: {{...}}}}, got {quotas!r}")
        quota = quotas.get(self.client_id)
        if quota is None:
            rates = self.quota_rates
        elif isinstance(quota, Mapping):
            rates = (quota.get("bytes_per_sec"), quota.get("records_per_sec"))
        else:
            raise ValueError(f"kafka.quotas[{self.client_id!r}] must be an object "
                             f"{{\"bytes_per_sec\": B, \"records_per_sec\": R}}, got {quota!r}")
        bytes_rate, records_rate = (None if rate is None else float(rate) / self._tasks for rate in rates)
        return bytes_rate, records_rate

    async def close(self) -> None:
        try:
            if self._consumer is not None:
                try:
                    await self._commit()
                except Exception as exc:
                    log.warning("%s: final commit failed: %s", self._name, exc)
                await self._consumer.stop()
        finally:
            if self._producer is not None:
                await self._producer.stop()

    # -- the loop ---------------------------------------------------------------------

    async def next_tuple(self) -> None:
        now = time.monotonic()
        if self._consumer is None:
            if now < self._next_connect:
                return
            await self._connect(now)
        if self._dead:
            await self._flush_dead_letters()
        # One tuple per call, a due retry first: the executor checks max-spout-pending
        # between calls, so a call that emitted a batch could overshoot it.
        if not self._emit_retry(now):
            if not self._buffer:
                await self._fetch(now)
            while self._buffer and not self._emit(self._buffer.popleft()):
                pass  # undecodable: dead-lettered, try the next one
        if now >= self._next_commit:
            self._next_commit = now + self.commit_interval
            await self._commit()
        if now >= self._next_refresh and not self.stop_at_end:
            self._next_refresh = now + self.metadata_refresh
            await self._assign()

    def _emit_retry(self, now: float) -> bool:
        """Emit the next record whose retry is due; False if none is."""
        while due := self._retries.due(now, limit=1):
            topic, partition, offset = due[0]
            record = self._partitions[TopicPartition(topic, partition)].record(offset)
            if record is not None:
                self._emit(record)
                return True
        return False

    def _emit(self, record: ConsumerRecord) -> bool:
        """Emit a record as a tuple; False if it cannot be decoded (it goes to the dead letters)."""
        tp = TopicPartition(record.topic, record.partition)
        msg_id = (record.topic, record.partition, record.offset)
        try:
            if self.record_to_values is not None:
                values = self.record_to_values(record)
            else:
                values = default_values(record, self._decode(record.value))
        except Exception as exc:  # undecodable: straight to the dead letters, never retried
            reason = str(exc) if isinstance(exc, UndecodableRecord) else f"{type(exc).__name__}: {exc}"
            self._partitions[tp].fetched(record.offset, record)
            self._dead.append((record, reason))
            return False
        self._partitions[tp].fetched(record.offset, record)
        self.emit(values, msg_id=msg_id)
        return True

    def ack(self, msg_id: MsgId) -> None:
        topic, partition, offset = msg_id
        self._partitions[TopicPartition(topic, partition)].done(offset)
        self._retries.forget(msg_id)

    def fail(self, msg_id: MsgId) -> None:
        if self._retries.failed(msg_id, time.monotonic()):
            return
        record = self._partitions[TopicPartition(msg_id[0], msg_id[1])].record(msg_id[2])
        if record is not None:
            self._dead.append((record, f"failed {self._retries.failures[msg_id]} times"))
        self._retries.forget(msg_id)

    def exhausted(self) -> bool:
        if not self.stop_at_end or self._consumer is None or self._buffer or self._dead:
            return False
        if len(self._retries) or any(len(p) for p in self._partitions.values()):
            return False
        return all(self._partitions[tp].fetched_to >= end for tp, end in self._end_offsets.items())

    # -- Kafka I/O --------------------------------------------------------------------

    async def _connect(self, now: float) -> None:
        """Start the clients and take this task's partitions; on failure, retry later."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, group_id=self.group_id, client_id=self.client_id,
            enable_auto_commit=False, auto_offset_reset=self.start, max_poll_records=self.fetch_records,
            metadata_max_age_ms=int(self.metadata_refresh * 1000),
        )
        try:
            await consumer.start()
            self._consumer = consumer
            await self._assign()
            missing = [tp for tp in self._assigned if tp not in self._end_offsets]
            if self.stop_at_end and missing:  # the ends seen at the first start stay the ends
                self._end_offsets.update(await consumer.end_offsets(missing))
        except Exception as exc:
            self._consumer = None
            await asyncio.sleep(0)  # aiokafka's stop() right after a failed start() raises otherwise
            with contextlib.suppress(Exception):
                await consumer.stop()
            delay = CONNECT_BACKOFF[min(self._connect_attempts, len(CONNECT_BACKOFF) - 1)]
            self._connect_attempts += 1
            self._next_connect = now + delay
            raise ConnectionError(f"Kafka at {self.bootstrap_servers}: {exc}; retrying in {delay:g} s") from exc
        self._connect_attempts = 0

    async def _topic_partitions(self) -> list[TopicPartition]:
        assert self._consumer is not None
        # Fresh metadata of every topic: once partitions are assigned, the consumer's own
        # metadata covers only their topics, so it would never show a new matching topic.
        cluster = await self._consumer._client.fetch_all_metadata()
        topics = cluster.topics()
        if self.topic_pattern is not None:
            names = sorted(t for t in topics if re.fullmatch(self.topic_pattern, t))
        else:
            missing = [t for t in self.topics if t not in topics]
            if missing:
                raise LookupError(f"unknown topic {missing[0]!r}")
            names = self.topics
        found = []
        for topic in names:
            for partition in sorted(cluster.partitions_for_topic(topic) or ()):
                found.append(TopicPartition(topic, partition))
        return found

    async def _assign(self) -> None:
        """Take this task's share of the partitions; new partitions join at the next refresh."""
        assert self._consumer is not None
        mine = (await self._topic_partitions())[self._index :: self._tasks]
        if set(mine) == set(self._assigned) == self._consumer.assignment():
            return
        self._consumer.assign(mine)
        for tp in mine:  # partitions read before (a new partition elsewhere, a reconnect): read on
            if tp in self._partitions:
                self._consumer.seek(tp, self._position(tp))
        for tp in mine:
            if tp in self._partitions:
                continue
            committed = await self._consumer.committed(tp)
            if committed is None:
                if self.start == "earliest":
                    start = (await self._consumer.beginning_offsets([tp]))[tp]
                else:
                    start = (await self._consumer.end_offsets([tp]))[tp]
            else:
                start = committed
            self._consumer.seek(tp, start)
            self._partitions[tp] = PartitionOffsets(start)
        self._assigned = mine  # only now: a failure above leaves the change to the next refresh
        log.info("%s task %d reads %s", self._name, self._index, [f"{t.topic}/{t.partition}" for t in mine])

    def _position(self, tp: TopicPartition) -> int:
        """Where to read on in a partition this task already reads (after a reassignment or
        a reconnect): past what it fetched, records still buffered included."""
        buffered = [r.offset for r in self._buffer if r.topic == tp.topic and r.partition == tp.partition]
        return max(buffered) + 1 if buffered else self._partitions[tp].fetched_to

    async def _fetch(self, now: float) -> None:
        """Fetch a batch within quota from the partitions below their uncommitted bound."""
        assert self._consumer is not None
        if self.quota.throttle_delay(now) > 0:
            if self._throttled_since is None:
                self._throttled_since = now
            return  # over quota: fetch later (the executor's idle wait paces the checks)
        if self._throttled_since is not None:
            self.quota.throttled_seconds += now - self._throttled_since
            self._throttled_since = None
        ready = []
        for tp in self._assigned:
            offsets = self._partitions[tp]
            room = self.max_uncommitted - offsets.uncommitted()
            if self.stop_at_end:
                room = min(room, self._end_offsets.get(tp, 0) - offsets.fetched_to)
            if room <= 0:
                if tp not in self._consumer.paused():
                    self._consumer.pause(tp)
            else:
                if tp in self._consumer.paused():
                    self._consumer.resume(tp)
                ready.append((tp, room))
        if not ready:
            return
        allowance = self.quota.allowance(now)
        limit = self.fetch_records if allowance is None else max(1, min(self.fetch_records, allowance))
        # Partition by partition, from a different one each time: a partition with a backlog
        # does not hold the others back, and none takes more than its room.
        self._rotation = (self._rotation + 1) % len(ready)
        for tp, room in ready[self._rotation:] + ready[:self._rotation]:
            if limit <= 0:
                break
            records = (await self._consumer.getmany(tp, timeout_ms=0, max_records=min(limit, room))).get(tp, [])
            limit -= len(records)
            end = self._end_offsets.get(tp) if self.stop_at_end else None
            for record in records:
                if end is not None and record.offset >= end:
                    break
                self._buffer.append(record)
                self.quota.consume(1, len(record.value or b"") + len(record.key or b""))

    async def _commit(self) -> None:
        assert self._consumer is not None
        offsets = {}
        for tp in self._assigned:  # aiokafka commits assigned partitions only
            point = self._partitions[tp].to_commit()
            if point is not None:
                offsets[tp] = OffsetAndMetadata(point, "")
        if offsets:
            try:
                await asyncio.wait_for(self._consumer.commit(offsets), COMMIT_TIMEOUT)
            except TimeoutError:
                raise TimeoutError(f"commit to Kafka at {self.bootstrap_servers} took over {COMMIT_TIMEOUT:g} s "
                                   "(broker unreachable?); retrying at the next commit interval") from None
            for tp, meta in offsets.items():
                self._partitions[tp].committed = meta.offset

    async def _flush_dead_letters(self) -> None:
        """Send records past their retries (or undecodable) to the dead-letter topic, with
        their origin in headers; mark them done once the broker has them."""
        if self.dead_letter_topic is not None and self._producer is None:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all",
                                        client_id=f"{self.client_id}-dlq")
            try:
                await producer.start()
            except Exception:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise  # the records stay in self._dead for the next round
            self._producer = producer
        dead, self._dead = self._dead, []
        for i, (record, reason) in enumerate(dead):
            if self._producer is None:
                self.dropped += 1
                log.warning("%s: dropped %s/%d@%d: %s (no dead-letter topic)", self._name,
                            record.topic, record.partition, record.offset, reason)
            else:
                headers = [("origin.topic", record.topic.encode()),
                           ("origin.partition", str(record.partition).encode()),
                           ("origin.offset", str(record.offset).encode()),
                           ("error", reason.encode("utf-8", "replace")[:1000])]
                try:
                    await self._producer.send_and_wait(self.dead_letter_topic, record.value,
                                                       key=record.key, headers=headers)
                except Exception:
                    self._dead[:0] = dead[i:]  # the next round tries these again
                    raise
                self.dead_lettered += 1
            self._partitions[TopicPartition(record.topic, record.partition)].done(record.offset)

    def metrics(self) -> dict[str, float]:
        return {
            "kafka.consumed_records": self.quota.consumed_records,
            "kafka.consumed_bytes": self.quota.consumed_bytes,
            "kafka.throttled_seconds": round(self.quota.throttled_seconds, 3),
            "kafka.uncommitted": sum(p.uncommitted() for p in self._partitions.values()),
            "kafka.in_flight": sum(len(p) for p in self._partitions.values()),
            "kafka.retrying": len(self._retries),
            "kafka.dead_lettered": self.dead_lettered,
            "kafka.dropped": self.dropped,
        }
