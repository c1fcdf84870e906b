"""KafkaSpout: reads Kafka with commit-after-ack, retries, dead letters and client quotas.

The spout is the Storm-facing façade over its parts, as aiokafka's consumer is:
:mod:`.assignment` (which partitions this task reads, and where each starts),
:mod:`.fetcher` (what it takes from librdkafka's queue, and which partitions it pauses),
:mod:`.commits` (commit points, sent to the broker under the spout's group id) and
:mod:`.redelivery` (retries and dead letters). Each record's offset is committed only
when it and every earlier record of its partition are done (see :mod:`.offsets`), so a
worker that dies resumes from the committed offsets: nothing is lost, and duplicates are
bounded by what was uncommitted, itself bounded per partition (``max_uncommitted``; at
the bound the partition pauses).

A failed tuple is retried with exponential backoff (:mod:`.retry`); after its last retry,
or at once when it cannot be made a tuple (its value does not decode, or ``emit``
refuses its values), the record goes to the dead-letter topic with its origin and the
error in headers, or is counted and dropped if no topic is set
(:mod:`.deadletters`). An unreachable broker or unknown topic is an error in ``status``
and the logs, retried with backoff (:data:`~.client.CONNECT_BACKOFF`) until it recovers.

In a topology with checkpointed state, the engine takes each task's position at every
checkpoint barrier and seeks the last committed checkpoint's positions at the start and at
each rollback (:meth:`KafkaSpout.position`, :meth:`KafkaSpout.seek`). Offsets are still
committed to Kafka after acks, which the engine gives when a checkpoint commits: the
group's committed offsets trail the checkpoints, and after a restart the checkpoint's
positions win over them.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence

from confluent_kafka import Consumer
from streamflow_connectors.kafka.assignment import Assignment, partition_name
from streamflow_connectors.kafka.client import (
    CONNECT_BACKOFF,
    ClientErrors,
    KafkaClientError,
    blocking,
    reason,
    settings,
)
from streamflow_connectors.kafka.commits import COMMIT_WAIT, Commits
from streamflow_connectors.kafka.fetcher import Fetcher
from streamflow_connectors.kafka.quota import Quota, task_rates
from streamflow_connectors.kafka.records import (
    DEFAULT_FIELDS,
    Message,
    Record,
    UndecodableRecord,
    decoder,
    default_values,
)
from streamflow_connectors.kafka.redelivery import MsgId, Redelivery, msg_id
from streamflow_connectors.kafka.retry import Backoff

from streamflow import AsyncSpout, TaskContext

log = logging.getLogger(__name__)

DEFAULT_BACKOFF = Backoff()

LIBRDKAFKA_REFRESH_MAX = 300.0
"""The longest metadata refresh interval handed to librdkafka, in seconds (its default).
librdkafka keeps metadata for three intervals, counted in microseconds in 32 bits: above
about 715 s that age wraps, and the leader of a partition it has not seen yet (a topic
found by the spout's own refresh) takes 1 to 30 s to look up instead of under one. The
spout's ``metadata_refresh`` may be longer: it drives the assignment itself."""


class KafkaSpout(AsyncSpout):
    """Emits Kafka records as tuples; see the module docstring for the guarantees.

    ``topics`` is a list of names, or ``topic_pattern`` a regular expression matched
    against the broker's topics. ``group_id`` (offsets) and ``client_id`` (quotas) default
    to ``<topology>-<component>``. Without ``record_to_values`` each tuple has
    :data:`~.records.DEFAULT_FIELDS` with the value decoded as ``value_format``; with it,
    the function gets a :class:`~.records.Record` and returns the values of ``fields``.
    ``config`` adds librdkafka settings (``security.protocol``, ``sasl.*``, tuning).
    Topology config can override: ``kafka.stop_at_end`` (stop at the end offsets seen at
    start, so local mode finishes) and ``kafka.quotas`` (``{client_id: {"bytes_per_sec":
    B, "records_per_sec": R}}``, also changeable on a running topology). A quota, given
    here or in ``kafka.quotas``, is the client id's: each of the component's ``n`` tasks
    takes ``1/n`` of it.

    Every ``metadata_refresh`` seconds the spout asks the broker for its topics'
    metadata: new partitions and matching topics join then (:mod:`.assignment`), and an
    outage shows within that time (plus :data:`~.client.BROKER_TIMEOUT`) even while
    librdkafka still serves records it fetched ahead. 5 s by default, as
    storm-kafka-client refreshes partitions every 2 s: one small request per task.
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
        record_to_values: Callable[[Record], Sequence[Any]] | None = None,
        fields: Sequence[str] = DEFAULT_FIELDS,
        commit_interval: float = 1.0,
        max_uncommitted: int = 10_000,
        backoff: Backoff = DEFAULT_BACKOFF,
        dead_letter_topic: str | None = None,
        stop_at_end: bool = False,
        bytes_per_sec: float | None = None,
        records_per_sec: float | None = None,
        metadata_refresh: float = 5.0,
        fetch_records: int = 500,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if bool(topics) == bool(topic_pattern):
            raise ValueError("KafkaSpout needs topics or a topic_pattern, not both")
        if start not in ("earliest", "latest"):
            raise ValueError(f"start must be 'earliest' or 'latest', got {start!r}")
        decoder(value_format)  # refuse an unknown format now, not in a worker
        if max_uncommitted < 1:
            raise ValueError(f"max_uncommitted must be at least 1, got {max_uncommitted!r}")
        if fetch_records < 1:
            raise ValueError(f"fetch_records must be at least 1, got {fetch_records!r}")
        for name, rate in (("bytes_per_sec", bytes_per_sec), ("records_per_sec", records_per_sec)):
            if rate is not None and rate < 0:
                raise ValueError(f"{name} must be at least 0 (0 stops the spout), got {rate!r}")
        if metadata_refresh <= 0:
            raise ValueError(f"metadata_refresh must be a positive number of seconds, got {metadata_refresh!r}")
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
        self.client_config = dict(config or {})

    # -- lifecycle --------------------------------------------------------------------

    async def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self._name = f"{context.topology}-{context.component}"
        self.group_id = self.group_id or self._name
        self.client_id = self.client_id or self._name
        self._index, self._tasks = context.task_index, context.parallelism
        if config.get("kafka.stop_at_end") is not None:  # checked as true or false by the engine
            self.stop_at_end = config["kafka.stop_at_end"]
        self.quota = Quota(*task_rates(config.get("kafka.quotas"), self.client_id, self.quota_rates, self._tasks))
        self._decode = decoder(self.value_format)
        self._errors = ClientErrors(self.bootstrap_servers)
        self._assignment = Assignment(self._name, self.topics, self.topic_pattern, self._index, self._tasks,
                                      self.start)
        self._fetcher = Fetcher(self._assignment, self.quota, self._errors, fetch_records=self.fetch_records,
                                max_uncommitted=self.max_uncommitted, stop_at_end=self.stop_at_end)
        self._commits = Commits(self._assignment, self._errors, self.commit_interval)
        self._redelivery = Redelivery(self._assignment, self.backoff, self.bootstrap_servers,
                                      self.dead_letter_topic, f"{self.client_id}-dlq", self.client_config)
        self._connect_attempts = 0
        self._next_connect = self._next_refresh = 0.0

    def deactivate(self) -> None:
        """Commit what is acked now: ``next_tuple``, which commits, is not called while
        the topology is inactive."""
        if self._fetcher.consumer is not None and self._assignment.assigned is not None:
            self._commits.commit(self._fetcher.consumer)

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """Apply ``kafka.quotas`` for this spout's client id (at open and on a change)."""
        if getattr(self, "quota", None) is None:
            return  # not open yet: open() reads the changed config
        # kafka.quotas has its shape checked by the engine, as the config of any topology.
        self.quota.set_rates(*task_rates(config.get("kafka.quotas"), str(self.client_id), self.quota_rates,
                                         self._tasks))

    async def close(self) -> None:
        """Write the pending dead letters, commit what is done, wait a little for both to
        be acknowledged, then close the consumer."""
        consumer, self._fetcher.consumer = self._fetcher.consumer, None
        if consumer is None:
            return
        try:
            if self._assignment.assigned is not None:
                await self._redelivery.dead.drain(COMMIT_WAIT)
                await self._commits.final(consumer)
        finally:
            await blocking(consumer.close)

    # -- the loop ---------------------------------------------------------------------

    async def next_tuple(self) -> None:
        now = time.monotonic()
        if self._assignment.assigned is None:
            if now < self._next_connect:
                return
            await self._connect(now)
        if self._redelivery.dead:
            self._redelivery.dead.send()
        # One tuple per call, a due retry first: the executor checks max-spout-pending
        # between calls, so a call that emitted a batch could overshoot it.
        if not self._emit_retry(now):
            buffer = self._fetcher.buffer
            if not buffer:
                self._fetcher.fetch(now)
            while buffer and not self._emit(buffer.popleft()):
                pass  # dead-lettered: try the next one
        if now >= self._commits.next_at:
            consumer = self._fetcher.consumer
            assert consumer is not None
            self._commits.periodic(consumer, now)
            self._fetcher.fetch(now)  # even when the buffer never empties: consume() serves errors and answers
        if now >= self._next_refresh and not self.stop_at_end:
            self._next_refresh = now + self.metadata_refresh
            await self._refresh()
        self._errors.raise_last()

    def _emit_retry(self, now: float) -> bool:
        """Emit the next record whose retry is due; False if none is."""
        record = self._redelivery.due(now)
        if record is None:
            return False
        if not self._emit(record):
            self._redelivery.retries.forget(msg_id(record))  # dead-lettered: no retry is left to count
        return True

    def _emit(self, message: Message) -> bool:
        """Emit a record as a tuple; False if it cannot be (it goes to the dead letters).

        A record cannot be emitted when its value does not decode, when
        ``record_to_values`` raises, or when ``emit`` refuses the values (as many values as
        the declared fields, say). Such a record is never retried: it would fail again, and
        it would stay in flight for ever, holding its partition's commit point back. Nor is
        one read again after a seek that has failed past its last retry already."""
        if self._redelivery.exhausted(message):
            return False
        try:
            if self.record_to_values is not None:
                values = self.record_to_values(Record(message))
            else:
                values = default_values(message, self._decode(message.value()))
            self.emit(values, msg_id=(message.topic(), message.partition(), message.offset()))
        except Exception as exc:
            why = str(exc) if isinstance(exc, UndecodableRecord) else f"{type(exc).__name__}: {exc}"
            self._redelivery.dead.add(message, why)
            return False
        return True

    def ack(self, msg_id: MsgId) -> None:
        topic, partition, offset = msg_id
        offsets = self._assignment.partitions.get((topic, partition))
        if offsets is not None:  # else its partition left this task
            offsets.done(offset)
        self._redelivery.acked(msg_id)

    def fail(self, msg_id: MsgId) -> None:
        self._redelivery.failed(msg_id, time.monotonic())

    def exhausted(self) -> bool:
        """With stop_at_end: every record below the end offsets seen at the start was
        emitted, and none waits for a retry or a dead letter's write. Records in flight may
        still fail (one then waits for its retry): the executor ends the spout only once
        its trees are all done. A partition whose end lies past its last record (a
        transaction's control record, which never reaches the spout) is read up to where
        librdkafka reports its end (``enable.partition.eof``, on with stop_at_end)."""
        if not self.stop_at_end or self._assignment.assigned is None or self._fetcher.buffer:
            return False
        return self._redelivery.idle() and self._fetcher.read_to_end()

    # -- checkpoints ------------------------------------------------------------------

    def position(self) -> dict[str, int]:
        """``{"topic/partition": offset}`` for this task's partitions: the first offset of
        each that the spout has not emitted, or that it must emit again (records taken
        from the consumer but still buffered, or waiting for a retry, count as not
        emitted). Partitions sought before they joined this task keep the sought offset."""
        at = self._fetcher.positions()
        self._redelivery.lower(at)
        found = {partition_name(key): offset for key, offset in at.items()}
        found.update((name, offset) for name, offset in self._assignment.sought.items()
                     if self._assignment.owns(name))
        return found

    def seek(self, positions: Mapping[str, Any]) -> None:
        """Read each partition of this task again from ``positions["topic/partition"]``,
        or from where the task started it if the key is missing; a partition not assigned
        yet starts at its position when it joins. What is buffered or scheduled for a retry
        is dropped, with the dead letters not yet written of the records read again; the
        commit point restarts at the position. Failure counts stay: a record that failed
        past its last retry is dead-lettered, not emitted, when it is read again."""
        self._redelivery.checkpointed = True
        to = self._assignment.seek(positions)
        if not to:
            return
        self._redelivery.seek(to)
        self._fetcher.restart(to)
        log.info("%s task %d reads again from %s", self._name, self._index,
                 {partition_name(key): offset for key, offset in to.items()})

    # -- Kafka I/O --------------------------------------------------------------------

    async def _connect(self, now: float) -> None:
        """Start the client and take this task's partitions; on failure, retry later."""
        try:
            if self._fetcher.consumer is None:
                self._fetcher.consumer = Consumer(settings(
                    self.bootstrap_servers, str(self.client_id), self._errors, self.client_config,
                    **{"group.id": self.group_id, **self._fetcher.settings(), **self._commits.settings(),
                       "topic.metadata.refresh.interval.ms":
                           int(min(self.metadata_refresh, LIBRDKAFKA_REFRESH_MAX) * 1000)}))
            await self._assign()
        except Exception as exc:
            self._connect_attempts += 1
            delay = CONNECT_BACKOFF.delay(self._connect_attempts)
            self._next_connect = now + delay
            self._errors.last = None  # this error says it all
            raise KafkaClientError(f"Kafka at {self.bootstrap_servers}: {reason(exc)}; "
                                   f"retrying in {delay:g} s") from exc
        self._connect_attempts = 0

    async def _refresh(self) -> None:
        """Follow new partitions and matching topics; on failure, try at the next refresh."""
        try:
            await self._assign()
        except Exception as exc:
            raise KafkaClientError(f"Kafka at {self.bootstrap_servers}: metadata refresh failed: "
                                   f"{reason(exc)}; retrying in {self.metadata_refresh:g} s") from exc

    async def _assign(self) -> None:
        """Take this task's share of the partitions (:mod:`.assignment`). Partitions that
        left (their topic deleted, or no longer matching the pattern) are committed as far
        as they are done (the answer is not awaited), then forgotten with their records
        waiting to be emitted and their retries. A record of theirs still in flight is acked
        or failed to no effect: whoever reads the partition next reads it from the commit."""
        consumer = self._fetcher.consumer
        assert consumer is not None
        change = await self._assignment.change(consumer)
        if change is None:
            return
        self._commits.commit(consumer, change.left)
        self._assignment.join(change.starts)
        self._assignment.leave(change.left)
        self._fetcher.reassign(change)
        self._redelivery.forget(set(change.left))
        self._assignment.assigned = change.mine  # only now: a failure above leaves the change to the next refresh
        if change.left:
            log.info("%s task %d no longer reads %s", self._name, self._index,
                     [partition_name(key) for key in change.left])
        log.info("%s task %d reads %s", self._name, self._index, [partition_name(key) for key in change.mine])

    # -- metrics ----------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """Per partition (``partition=TOPIC/P``): committed offset, lag, uncommitted
        offsets, retries and dead letters; per client id: records and bytes consumed,
        seconds throttled (by the spout's quota or a broker's); per task: records emitted
        and not done (``kafka.in_flight``) and waiting for a retry (``kafka.retrying``).
        Labels are the partitions the task read and its one client id: a bounded set.

        ``kafka.lag`` is the partition's high watermark, as librdkafka last saw it in a
        fetch, minus the committed offset (what a restart would read again plus what is
        still to read), never below 0; it is missing until a fetch reported the watermark.
        Tansu (the test broker) reports as high watermark the base offset of the last record
        batch + 1, which is below the real end when that batch holds several records: there,
        the lag reads low."""
        return {**self._assignment.metrics(), **self._fetcher.metrics(time.monotonic(), self.client_id),
                "kafka.retrying": len(self._redelivery.retries)}
