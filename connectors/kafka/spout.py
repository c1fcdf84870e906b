"""KafkaSpout: reads Kafka with commit-after-ack, retries, dead letters and client quotas.

Each task is assigned its share of the topics' partitions explicitly (:func:`owner`): no
consumer-group rebalances inside a topology, and a partition stays with its task when
partitions or topics are added. A record's offset is committed, under the spout's group
id, only when it and every earlier record of its partition are done (see :mod:`.offsets`),
so a worker that dies resumes from the committed offsets: nothing is lost, and duplicates
are bounded by what was uncommitted, itself bounded per partition (``max_uncommitted``; at
the bound the partition pauses).

A failed tuple is retried with exponential backoff (:mod:`.retry`); after its last retry,
or at once when it cannot be made a tuple (its value does not decode, or ``emit``
refuses its values), the record goes to the dead-letter topic with its origin and the
error in headers, or is counted and dropped if no topic is set
(:mod:`.deadletters`). An unreachable broker or unknown topic is an error in ``status``
and the logs, retried with backoff until it recovers.

The client is librdkafka's (confluent-kafka, see :mod:`.client`): it fetches ahead in its
own threads, and the spout takes records from its queue with ``consume(timeout=0)``,
which never blocks the event loop. Pausing a partition in librdkafka drops what it
fetched ahead for it; the spout then seeks the partition back to the first offset it did
not take, so that nothing is skipped when it resumes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from typing import Any, Callable, Mapping, Sequence, cast

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import TopicMetadata
from streamflow_connectors.kafka.client import (
    BROKER_TIMEOUT,
    CONNECT_BACKOFF,
    ClientErrors,
    KafkaClientError,
    blocking,
    reason,
    settings,
)
from streamflow_connectors.kafka.deadletters import DeadLetters
from streamflow_connectors.kafka.offsets import PartitionOffsets, start_offset
from streamflow_connectors.kafka.quota import Quota
from streamflow_connectors.kafka.records import (
    DEFAULT_FIELDS,
    Message,
    Record,
    UndecodableRecord,
    decoder,
    default_values,
)
from streamflow_connectors.kafka.retry import Backoff, RetrySchedule

from streamflow import AsyncSpout, TaskContext
from streamflow.groupings import stable_hash

log = logging.getLogger(__name__)

Key = tuple[str, int]  # topic, partition
MsgId = tuple[str, int, int]  # topic, partition, offset
DEFAULT_BACKOFF = Backoff()
COMMIT_WAIT = 5.0
"""Seconds ``close`` waits for its last commit (and dead letters) to be acknowledged."""
RECOMMIT_INTERVAL = 3600.0
"""Seconds between commits of every assigned partition's commit point, moved or not. A
broker expires the committed offsets of a group that has no members after
``offsets.retention.minutes`` (7 days by default), and the spout's group never has
members, as it assigns its partitions itself: without this, the offset of a partition
that had nothing new for a week would expire, and a restart would read it from ``start``
again. An hour is far below any retention in use, and costs one request an hour."""
ANSWER_POLL = 0.01
"""Seconds between looks for the answer to the final commit."""
PAUSE_AFTER = 1.0
"""Seconds over quota after which the spout pauses its partitions. A shorter throttle only
stops taking records: librdkafka fetches ahead up to a bound (``queued.min.messages``) and
then stops asking the broker, and a pause would cost more than it saves, as a resumed
partition waits for the fetch under way (up to ``fetch.wait.max.ms``) before its next one,
and fetches again what the pause dropped."""
FETCH_WAIT_MS = 100
"""How long the broker may hold a fetch when there is nothing new (librdkafka's default,
500 ms, is also how long a resumed partition may wait for its first record)."""
PREFETCH_RECORDS = 20_000
"""Records per partition librdkafka keeps fetched ahead (``queued.min.messages``). Once a
fetch leaves a partition's queue above it, librdkafka waits ``fetch.queue.backoff.ms``
(1 s) before it fetches that partition again, so the queue must hold more than a
second's worth. With 1,000, the spouts of the Kafka wordcount found the queue empty on
60-80% of their takes while the topic still held records, and their workers idled; with
20,000, on none (400,000 sentences: 13.0-13.6k sentences/s in local mode and 13.4-15.3k
on 2 workers, against 14.5-17.9k and 16.8-21.5k). librdkafka's bound on queued bytes
(``queued.max.messages.kbytes``, 64 MiB) still holds for large records."""


def owner(topic: str, partition: int, tasks: int) -> int:
    """The task, of ``tasks``, that reads a partition: a topic's partitions go round the
    tasks from one its name picks. A partition added to a topic, or a topic added to a
    pattern, never moves a partition that a task reads already (every ``n``-th partition
    of all of them in order did: the old task kept its state and retries, and could move
    the committed offset back later), and the first partitions of many small topics do
    not all land on task 0."""
    return (partition + stable_hash(topic)) % tasks


def topic_problem(name: str, metadata: TopicMetadata | None) -> str | None:
    """Why a topic the spout names cannot be read, None if it can: unknown to the broker,
    or the error of its metadata in the broker's words (``Topic authorization failed``,
    say, which is no unknown topic)."""
    error = None if metadata is None else metadata.error
    if metadata is None or (error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
        return f"unknown topic {name!r}"
    return None if error is None else f"topic {name!r}: {error.str()}"


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

    Every ``metadata_refresh`` seconds the spout asks the broker for its topics' metadata:
    new partitions and matching topics join then, and an outage shows within that time
    (plus :data:`~.client.BROKER_TIMEOUT`) even while librdkafka still holds records it
    fetched ahead, which it serves before its connection errors. 5 s by default, as
    storm-kafka-client refreshes partitions every 2 s: one small request per task.

    A partition without a committed offset starts at its earliest or latest offset, as
    ``start`` says; but one found after the first assignment (a partition added to a
    topic, a new topic matching the pattern) starts at its earliest, as Flink's Kafka
    source does: it was found up to ``metadata_refresh`` seconds late, and its latest
    offset would skip what was written to it meanwhile.

    In a topology with checkpointed state, the engine takes each task's :meth:`position`
    at every checkpoint barrier, ``{"topic/partition": offset}`` (the first offset not
    emitted yet: records buffered or waiting for a retry are not emitted), and at the
    start and at each rollback it calls :meth:`seek` with the last committed checkpoint's
    positions: each partition is read again from there (or from where the task started it,
    if the checkpoint has no position for it), dropping what was buffered or scheduled for
    a retry. Offsets are still committed to Kafka after acks, which the engine gives when a
    checkpoint commits: the group's committed offsets trail the checkpoints, and after a
    restart the checkpoint's positions win over them. Failures are counted across seeks: a
    record that failed past its last retry goes to the dead letters when it is read again,
    rather than being emitted, so that a poison record cannot roll the topology back for
    ever.
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
        self.quota = Quota(*self._rates(config))
        self._decode = decoder(self.value_format)
        self._errors = ClientErrors(self.bootstrap_servers)
        self._consumer: Consumer | None = None
        self._assigned: list[Key] | None = None
        """This task's partitions; None until the first assignment succeeded."""
        self._partitions: dict[Key, PartitionOffsets] = {}
        self._end_offsets: dict[Key, int] = {}
        self._buffer: deque[Message] = deque()
        self._retries: RetrySchedule[MsgId] = RetrySchedule(self.backoff)
        self._dead = DeadLetters(self.bootstrap_servers, self.dead_letter_topic, f"{self.client_id}-dlq",
                                 self.client_config, self._dead_lettered)
        self._paused: set[Key] = set()
        self._held: set[Key] = set()
        """Partitions at their uncommitted bound (or their end, with stop_at_end)."""
        self._connect_attempts = 0
        self._next_connect = self._next_commit = self._next_refresh = 0.0
        self._next_recommit = time.monotonic() + RECOMMIT_INTERVAL
        self._throttled_since: float | None = None
        self._started: dict[Key, int] = {}
        """Where this task started each of its partitions: the committed offset, else the
        earliest or latest one (a seek to positions without the partition goes back there)."""
        self._sought: dict[str, int] = {}
        """Positions of the last seek for partitions not assigned yet: where they start."""
        self._checkpointed = False
        """Whether the engine seeks this spout (a topology with checkpointed state): set by
        the first ``seek``, at the topology's start."""

    def deactivate(self) -> None:
        """Commit what is acked now: ``next_tuple``, which commits, is not called while
        the topology is inactive."""
        if self._consumer is not None and self._assigned is not None:
            self._commit()

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """Apply ``kafka.quotas`` for this spout's client id (at open and on a change)."""
        if getattr(self, "quota", None) is None:
            return  # not open yet: open() reads the changed config
        self.quota.set_rates(*self._rates(config))

    def _rates(self, config: Mapping[str, Any]) -> tuple[float | None, float | None]:
        """This task's (bytes/s, records/s): the client id's entry in ``kafka.quotas`` (its
        shape checked by the engine, as the config of any topology), else the constructor's
        rates, shared evenly by the component's tasks."""
        quota = (config.get("kafka.quotas") or {}).get(self.client_id)
        rates = self.quota_rates if quota is None else (quota.get("bytes_per_sec"), quota.get("records_per_sec"))
        bytes_rate, records_rate = (None if rate is None else float(rate) / self._tasks for rate in rates)
        return bytes_rate, records_rate

    async def close(self) -> None:
        """Write the pending dead letters, commit what is done, wait a little for both to
        be acknowledged, then close the consumer."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            if self._assigned is not None:
                await self._dead.drain(COMMIT_WAIT)
                await self._final_commit(consumer)
        finally:
            await blocking(consumer.close)

    async def _final_commit(self, consumer: Consumer) -> None:
        """Commit and wait up to :data:`COMMIT_WAIT` for the broker's answer, which
        ``consume()`` serves (every partition is paused first, so it returns no record).
        A commit that failed or got no answer is one warning: nothing asks for it again,
        and a restart reads the records since the last commit again."""
        consumer.pause([TopicPartition(t, p) for t, p in self._assigned or ()])
        self._errors.last = None  # from here on, the commit's
        asked = [(partition, partition.commit_sent) for partition in self._commit(consumer)]
        deadline = time.monotonic() + COMMIT_WAIT
        # Unanswered: still asked for (a failure sets commit_sent back) and not confirmed.
        while any(p.commit_sent >= point > p.committed for p, point in asked) and time.monotonic() < deadline:
            consumer.consume(1, timeout=0)
            await asyncio.sleep(ANSWER_POLL)
        uncommitted = sum(p.committed < point for p, point in asked)
        if uncommitted:
            error = self._errors.last
            log.warning("%s: the final commit of %d partitions failed (%s)", self._name, uncommitted,
                        f"no answer within {COMMIT_WAIT:g} s" if error is None else error.str())

    # -- the loop ---------------------------------------------------------------------

    async def next_tuple(self) -> None:
        now = time.monotonic()
        if self._assigned is None:
            if now < self._next_connect:
                return
            await self._connect(now)
        if self._dead:
            self._dead.send()
        # One tuple per call, a due retry first: the executor checks max-spout-pending
        # between calls, so a call that emitted a batch could overshoot it.
        if not self._emit_retry(now):
            if not self._buffer:
                self._fetch(now)
            while self._buffer and not self._emit(self._buffer.popleft()):
                pass  # dead-lettered: try the next one
        if now >= self._next_commit:
            self._next_commit = now + self.commit_interval
            again = now >= self._next_recommit
            if again:
                self._next_recommit = now + RECOMMIT_INTERVAL
            self._commit(again=again)
            self._fetch(now)  # also when the buffer never empties: consume() serves errors and commit answers
        if now >= self._next_refresh and not self.stop_at_end:
            self._next_refresh = now + self.metadata_refresh
            await self._refresh()
        self._errors.raise_last()

    def _emit_retry(self, now: float) -> bool:
        """Emit the next record whose retry is due; False if none is."""
        due_at = self._retries.next_due()
        if due_at is None or due_at > now:
            return False
        while due := self._retries.due(now, limit=1):
            topic, partition, offset = due[0]
            offsets = self._partitions.get((topic, partition))
            record = None if offsets is None else offsets.record(offset)  # None: done, or its partition left
            if offsets is not None and record is not None:
                offsets.retries += 1
                if not self._emit(record):
                    self._retries.forget(due[0])  # dead-lettered: no retry is left to count
                return True
        return False

    def _emit(self, message: Message) -> bool:
        """Emit a record as a tuple; False if it cannot be (it goes to the dead letters).

        A record cannot be emitted when its value does not decode, when
        ``record_to_values`` raises, or when ``emit`` refuses the values (as many values as
        the declared fields, say). Such a record is never retried: it would fail again, and
        it would stay in flight for ever, holding its partition's commit point back. Nor is
        one read again after a seek that has failed past its last retry already."""
        if self._retries.failures:
            failures = self._retries.failures.get((message.topic(), message.partition(), message.offset()), 0)
            if self.backoff.exhausted(failures):
                self._dead.add(message, f"failed {failures} times")
                return False
        try:
            if self.record_to_values is not None:
                values = self.record_to_values(Record(message))
            else:
                values = default_values(message, self._decode(message.value()))
            self.emit(values, msg_id=(message.topic(), message.partition(), message.offset()))
        except Exception as exc:
            why = str(exc) if isinstance(exc, UndecodableRecord) else f"{type(exc).__name__}: {exc}"
            self._dead.add(message, why)
            return False
        return True

    def ack(self, msg_id: MsgId) -> None:
        topic, partition, offset = msg_id
        offsets = self._partitions.get((topic, partition))
        if offsets is not None:  # else its partition left this task
            offsets.done(offset)
        if self._retries.failures:
            self._retries.forget(msg_id)

    def fail(self, msg_id: MsgId) -> None:
        topic, partition, offset = msg_id
        offsets = self._partitions.get((topic, partition))
        if offsets is None:  # its partition left this task: another reads it from the last commit
            self._retries.forget(msg_id)
            return
        if self._retries.failed(msg_id, time.monotonic()):
            return
        record = offsets.record(offset)
        if record is not None:
            self._dead.add(record, f"failed {self._retries.failures[msg_id]} times")
        if not self._checkpointed:  # else a seek may read it again: its count sends it to the dead letters
            self._retries.forget(msg_id)

    def _dead_lettered(self, message: Message) -> None:
        """The dead-letter path is done with a record: its offset may be committed."""
        offsets = self._partitions.get((message.topic(), message.partition()))
        if offsets is not None:  # else its partition left this task
            offsets.dead_letters += 1
            if offsets.record(message.offset()) is message:  # else a seek since read it again: not done
                offsets.done(message.offset())

    def exhausted(self) -> bool:
        """With stop_at_end: every record below the end offsets seen at the start is done.
        A partition whose end lies past its last record (a transaction's control record,
        which never reaches the spout) is read up to where librdkafka reports its end
        (``enable.partition.eof``, on with stop_at_end)."""
        if not self.stop_at_end or self._assigned is None or self._buffer or self._dead:
            return False
        if len(self._retries) or any(len(p) for p in self._partitions.values()):
            return False
        return all(self._partitions[key].fetched_to >= end for key, end in self._end_offsets.items())

    # -- checkpoints ------------------------------------------------------------------

    def position(self) -> dict[str, int]:
        """``{"topic/partition": offset}`` for this task's partitions: the first offset of
        each that the spout has not emitted, or that it must emit again (records taken
        from the consumer but still buffered, or waiting for a retry, count as not
        emitted). Partitions sought before they joined this task keep the sought offset."""
        at = {key: offsets.fetched_to for key, offsets in self._partitions.items()}
        for message in self._buffer:
            key = (message.topic(), message.partition())
            if message.offset() < at.get(key, -1):
                at[key] = message.offset()
        for topic, partition, offset in self._retries.scheduled():
            if offset < at.get((topic, partition), -1):
                at[topic, partition] = offset
        found = {f"{topic}/{partition}": offset for (topic, partition), offset in at.items()}
        found.update((name, offset) for name, offset in self._sought.items() if self._owns(name))
        return found

    def seek(self, positions: Mapping[str, Any]) -> None:
        """Read each partition of this task again from ``positions["topic/partition"]``,
        or from where the task started it if the key is missing; a partition not assigned
        yet starts at its position when it joins. What is buffered or scheduled for a retry
        is dropped, with the dead letters not yet written of the records read again; the
        commit point restarts at the position. Failure counts stay: a record that failed
        past its last retry is dead-lettered, not emitted, when it is read again."""
        self._checkpointed = True
        names = {key: f"{key[0]}/{key[1]}" for key in self._partitions}
        mine = set(names.values())
        self._sought = {name: int(offset) for name, offset in positions.items() if name not in mine}
        if not self._partitions:
            return
        to = {key: int(positions.get(name, self._started[key])) for key, name in names.items()}
        self._buffer.clear()
        self._retries.unschedule()
        # No later seek goes below this one (checkpoints only move on): counts below it are done with.
        self._retries.failures = {msg_id: n for msg_id, n in self._retries.failures.items()
                                  if msg_id[2] >= to.get(msg_id[:2], 0)}
        self._dead.drop(lambda m: m.offset() >= to.get((m.topic(), m.partition()), m.offset() + 1))
        for key, offset in to.items():
            self._partitions[key].restart_at(offset)
        self._held = set()
        if self._consumer is not None:
            self._pause(set())  # librdkafka keeps a partition paused across assign(): see _assign
            self._consumer.assign([TopicPartition(t, p, to[t, p]) for t, p in self._assigned or ()])
        log.info("%s task %d reads again from %s", self._name, self._index,
                 {names[key]: offset for key, offset in to.items()})

    def _owns(self, name: str) -> bool:
        """Whether partition ``"topic/partition"`` is of this spout's topics and this
        task's (:func:`owner`)."""
        topic, _, partition = name.rpartition("/")
        ours = re.fullmatch(self.topic_pattern, topic) if self.topic_pattern is not None else topic in self.topics
        return bool(ours) and owner(topic, int(partition), self._tasks) == self._index

    # -- Kafka I/O --------------------------------------------------------------------

    async def _connect(self, now: float) -> None:
        """Start the client and take this task's partitions; on failure, retry later.

        librdkafka's ``auto.offset.reset`` is ``earliest`` whatever ``start`` says: the
        spout gives each partition its start offset itself, so the reset only applies to a
        fetch out of range (retention deleted records past the position of a paused
        partition, a truncated log, a recreated topic), where reading on from the earliest
        record left loses none of those left, as ``latest`` would."""
        try:
            if self._consumer is None:
                self._consumer = Consumer(settings(
                    self.bootstrap_servers, str(self.client_id), self._errors, self.client_config,
                    **{"group.id": self.group_id, "enable.auto.commit": False, "enable.auto.offset.store": False,
                       "auto.offset.reset": "earliest", "on_commit": self._committed,
                       "throttle_cb": self._broker_throttled, "fetch.wait.max.ms": FETCH_WAIT_MS,
                       "queued.min.messages": max(2 * self.fetch_records, PREFETCH_RECORDS),
                       "enable.partition.eof": self.stop_at_end,
                       "topic.metadata.refresh.interval.ms": int(self.metadata_refresh * 1000)}))
            await self._assign()
        except Exception as exc:
            delay = CONNECT_BACKOFF[min(self._connect_attempts, len(CONNECT_BACKOFF) - 1)]
            self._connect_attempts += 1
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

    async def _topic_partitions(self) -> list[Key]:
        """Every partition of the spout's topics, in (topic, partition) order, from fresh
        metadata: of its one topic, or of every topic (a pattern may match a topic created
        since)."""
        assert self._consumer is not None
        one = self.topics[0] if len(self.topics) == 1 else None
        cluster = await blocking(self._consumer.list_topics, one, BROKER_TIMEOUT)
        topics = cluster.topics
        if self.topic_pattern is not None:
            names = sorted(t for t in topics if re.fullmatch(self.topic_pattern, t))
        else:
            problems = [problem for t in self.topics if (problem := topic_problem(t, topics.get(t)))]
            if problems:
                raise LookupError(problems[0])
            names = self.topics
        return [(topic, partition) for topic in names for partition in sorted(topics[topic].partitions)]

    async def _assign(self) -> None:
        """Take this task's share of the partitions (:func:`owner`); new partitions join at
        the next refresh. One that left (its topic deleted, or no longer matching the
        pattern) is committed and forgotten (:meth:`_leave`).

        Every paused partition is resumed first: librdkafka keeps a partition paused across
        ``assign()`` (librdkafka 2.16, measured), so one paused by the spout, which then
        counted it unpaused, stayed paused for ever. The next :meth:`_fetch` pauses again
        what is at its bound or over quota."""
        assert self._consumer is not None
        mine = [key for key in await self._topic_partitions() if owner(*key, self._tasks) == self._index]
        if mine == self._assigned:
            return
        new = [key for key in mine if key not in self._partitions]
        starts, ends = await blocking(self._offsets, new)
        for key in new:
            self._started[key] = starts[key]
            self._partitions[key] = PartitionOffsets(starts[key])
            sought = self._sought.pop(f"{key[0]}/{key[1]}", None)
            if sought is not None:  # a seek before the partition joined: it starts there
                self._partitions[key].restart_at(sought)
        if self.stop_at_end:  # the ends seen at the first start stay the ends
            for key, end in ends.items():
                self._end_offsets.setdefault(key, end)
        self._pause(set())
        self._leave([key for key in self._assigned or () if key not in mine])
        self._consumer.assign([TopicPartition(t, p, self._partitions[t, p].fetched_to) for t, p in mine])
        self._assigned = mine  # only now: a failure above leaves the change to the next refresh
        log.info("%s task %d reads %s", self._name, self._index, [f"{t}/{p}" for t, p in mine])

    def _leave(self, keys: list[Key]) -> None:
        """Partitions that left this task: commit what is done of them (the answer is not
        awaited), then forget them, their records waiting to be emitted and their retries.
        A record of theirs still in flight is acked or failed to no effect: whoever reads
        the partition next reads it again from the commit."""
        if not keys:
            return
        self._commit(keys=keys)
        gone = set(keys)
        for key in keys:
            del self._partitions[key]
            self._end_offsets.pop(key, None)
            self._started.pop(key, None)
        self._held -= gone
        self._buffer = deque(m for m in self._buffer if (m.topic(), m.partition()) not in gone)
        self._retries.drop(lambda msg_id: msg_id[:2] in gone)
        log.info("%s task %d no longer reads %s", self._name, self._index, [f"{t}/{p}" for t, p in keys])

    def _offsets(self, keys: list[Key]) -> tuple[dict[Key, int], dict[Key, int]]:
        """(where to start, the high watermark) of new partitions: the committed offset,
        else the earliest or latest one (see :func:`.start_offset`). Blocking: run it in a
        worker thread."""
        assert self._consumer is not None
        if not keys:
            return {}, {}
        committed = self._consumer.committed([TopicPartition(t, p) for t, p in keys], timeout=BROKER_TIMEOUT)
        reset = self.start if self._assigned is None else "earliest"  # found late: see the class docstring
        starts, ends = {}, {}
        for tp in committed:
            key = (tp.topic, tp.partition)
            low, high = self._consumer.get_watermark_offsets(TopicPartition(*key), timeout=BROKER_TIMEOUT)
            ends[key] = high
            starts[key] = start_offset(tp.offset, low, high, reset)  # tp.offset < 0: none committed
            if 0 <= tp.offset < low:
                log.warning("%s: %s/%d: committed offset %d is below the log's start %d (deleted by retention "
                            "before it was read): reading from %d", self._name, *key, tp.offset, low, low)
        return starts, ends

    def _fetch(self, now: float) -> None:
        """Take what librdkafka fetched ahead, within quota, from partitions below their
        uncommitted bound; pause and resume partitions to match."""
        assert self._consumer is not None
        throttled_for = self._throttled(now)
        if self._held:
            self._held = {key for key in self._held if self._limit(key) <= self._partitions[key].fetched_to}
        paused_by_quota = throttled_for >= PAUSE_AFTER
        self._pause(set(self._assigned or ()) if paused_by_quota else self._held)
        if throttled_for and not paused_by_quota:
            return  # leave the records to librdkafka's bounded queue until the quota allows
        allowance = None if throttled_for else self.quota.allowance(now)
        limit = self.fetch_records if allowance is None else max(1, min(self.fetch_records, allowance))
        # Called while paused by the quota too: consume() also serves commit answers and
        # errors, and returns no record then.
        self._take(cast(list[Message], self._consumer.consume(limit, timeout=0)))

    def _take(self, messages: list[Message]) -> None:
        """Buffer records to emit; a record past its partition's limit is left to be read
        again, and its partition paused and rewound to it. Where a partition with nothing
        in flight goes on is where its next record is (:meth:`_skip`)."""
        if not messages:
            return
        partitions, buffer = self._partitions, self._buffer
        limits: dict[Key, int] = {}
        rewind: set[Key] = set()
        taken = size = 0
        for message in messages:
            error = message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                self._errors(error)  # an unknown partition, say: librdkafka goes on, the spout tells
                continue
            key = (message.topic(), message.partition())
            offsets = partitions.get(key)
            if offsets is None:
                continue  # a partition no longer assigned
            if error is not None:  # the partition's end, asked for with stop_at_end
                if key not in self._paused and key not in rewind:  # else records below it were left
                    offsets.served_to(message.offset())
                continue
            offset = message.offset()
            limit = limits.get(key)
            if limit is None:  # the partition's first record in this batch
                if offset != offsets.fetched_to and not offsets and key not in self._paused:
                    self._skip(key, offsets, offset)
                limit = limits[key] = -1 if key in self._paused else self._limit(key)
            if offset < offsets.fetched_to:
                continue  # taken before (or a log that restarted lower while records were in flight)
            if offset >= limit:
                rewind.add(key)
                continue
            offsets.fetched(offset, message)
            buffer.append(message)
            taken += 1
            size += len(message) + len(message.key() or b"")
        self.quota.consume(taken, size)
        if rewind:
            self._rewind(rewind)

    def _skip(self, key: Key, offsets: PartitionOffsets, offset: int) -> None:
        """A partition with nothing in flight goes on at ``offset``, not where the spout
        stopped taking records: past a gap, or back at the start of a recreated topic (see
        :meth:`.PartitionOffsets.skip_to`), which is worth a warning."""
        if offset < offsets.fetched_to:
            log.warning("%s: %s/%d goes on at offset %d, below %d, which it had read up to: the topic was "
                        "recreated or its log truncated", self._name, *key, offset, offsets.fetched_to)
        offsets.skip_to(offset)

    def _rewind(self, keys: set[Key]) -> None:
        """Pause partitions whose records went past their limit (those at their bound are
        held until there is room again) and seek each back to its first record not taken:
        consume() moved past the records it returned."""
        assert self._consumer is not None
        self._held |= keys - self._paused
        self._pause(self._paused | keys)
        for topic, partition in keys:
            self._consumer.seek(TopicPartition(topic, partition, self._partitions[topic, partition].fetched_to))

    def _limit(self, key: Key) -> int:
        """The first offset of a partition the spout may not take yet: the uncommitted
        bound (``uncommitted()`` counts offsets from the commit point), or the end offset
        with stop_at_end."""
        limit = self._partitions[key].commit_point() + self.max_uncommitted
        return min(limit, self._end_offsets.get(key, limit)) if self.stop_at_end else limit

    def _pause(self, wanted: set[Key]) -> None:
        """Pause exactly the ``wanted`` partitions in librdkafka (which stops fetching them
        and drops what it fetched ahead for them)."""
        assert self._consumer is not None
        if wanted == self._paused:
            return
        pause, resume = wanted - self._paused, self._paused - wanted
        if pause:
            self._consumer.pause([TopicPartition(t, p) for t, p in pause])
        if resume:
            self._consumer.resume([TopicPartition(t, p) for t, p in resume])
        self._paused = set(wanted)

    def _throttled(self, now: float) -> float:
        """How long the client id has been over quota, counting its total throttled time,
        or how long it will be if longer (a rate of 0 is over quota for ever); 0 when
        within quota. Over quota, fetching stops, as a broker delays a throttled client."""
        delay = self.quota.throttle_delay(now)
        if delay > 0:
            if self._throttled_since is None:
                self._throttled_since = now
            return max(delay, now - self._throttled_since)
        if self._throttled_since is not None:
            self.quota.throttled_seconds += now - self._throttled_since
            self._throttled_since = None
        return 0.0

    def _broker_throttled(self, event: Any) -> None:
        """A broker delayed this client under a broker-side quota (``throttle_cb``)."""
        self.quota.throttled_seconds += float(event.throttle_time)

    def _commit(self, consumer: Consumer | None = None, keys: Sequence[Key] | None = None,
                again: bool = False) -> list[PartitionOffsets]:
        """Ask the broker to commit the new commit point of every assigned partition (or of
        ``keys``), or with ``again`` every point (see :data:`RECOMMIT_INTERVAL`); the answer
        comes later, through ``consume()``, to :meth:`_committed`. Returns those asked for."""
        consumer = consumer or self._consumer
        assert consumer is not None
        sent = []
        offsets = []
        for key in (self._assigned or ()) if keys is None else keys:
            partition = self._partitions[key]
            point = partition.to_commit(again)
            if point is not None:
                partition.commit_asked(point)
                sent.append(partition)
                offsets.append(TopicPartition(key[0], key[1], point))
        if offsets:
            consumer.commit(offsets=offsets, asynchronous=True)
        return sent

    def _committed(self, error: KafkaError | None, answered: list[TopicPartition]) -> None:
        """The broker's answer to a commit (``on_commit``): confirmed points become the
        committed offsets; failed ones are asked for again at the next commit, and the
        error, of the request or of a partition, shows in status."""
        for tp in answered:
            partition = self._partitions.get((tp.topic, tp.partition))
            if partition is None:
                continue
            if error is None and tp.error is None:
                partition.commit_confirmed(tp.offset)
            else:
                partition.commit_failed()
                if tp.error is not None:
                    self._errors(tp.error)
        if error is not None:
            self._errors(error)

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
        now = time.monotonic()
        throttled = self.quota.throttled_seconds
        if self._throttled_since is not None:
            throttled += now - self._throttled_since
        client = f"client_id={self.client_id}"
        partitions = {f"partition={t}/{p}": offsets for (t, p), offsets in self._partitions.items()}
        return {
            "kafka.committed_offset": {label: o.committed for label, o in partitions.items()},
            "kafka.lag": self._lag(),
            "kafka.uncommitted": {label: o.uncommitted() for label, o in partitions.items()},
            "kafka.retries": {label: o.retries for label, o in partitions.items()},
            "kafka.dead_letters": {label: o.dead_letters for label, o in partitions.items()},
            "kafka.consumed_records": {client: self.quota.consumed_records},
            "kafka.consumed_bytes": {client: self.quota.consumed_bytes},
            "kafka.throttled_seconds": {client: round(throttled, 3)},
            "kafka.in_flight": sum(len(p) for p in self._partitions.values()) - len(self._buffer),
            "kafka.retrying": len(self._retries),
        }

    def _lag(self) -> dict[str, int]:
        """High watermark minus committed offset per assigned partition whose watermark is
        known (librdkafka's cached value: no request to the broker)."""
        lag = {}
        if self._consumer is not None:
            for topic, partition in self._assigned or ():
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                committed = self._partitions[topic, partition].committed
                if high >= 0:
                    lag[f"partition={topic}/{partition}"] = max(high - committed, 0)
        return lag

