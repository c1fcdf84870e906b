"""Which partitions a spout task reads, and where it starts each: assignment without a
consumer group.

Each task takes its share of the topics' partitions itself (:func:`owner`): no
consumer-group rebalances inside a topology, and a partition stays with its task when
partitions or topics are added. The spout asks the broker for its topics' metadata at its
start and at every refresh (:meth:`Assignment.change`): a partition that is new to the
task joins, and one that is gone (its topic deleted, or no longer matching the pattern)
leaves.

A partition that joins starts at the group's committed offset; without one, at its
earliest or latest offset as ``start`` says for the first assignment, and at its earliest
for a partition found later (added to a topic, or of a new topic matching the pattern), as
Flink's Kafka source does: it was found up to a refresh interval late, and its latest
offset would skip what was written to it meanwhile. A seek before the partition joined
(the positions of a checkpoint) wins over both.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import TopicMetadata
from streamflow_connectors.kafka.client import BROKER_TIMEOUT, blocking
from streamflow_connectors.kafka.offsets import Key, PartitionOffsets, start_offset

from streamflow.groupings import stable_hash

log = logging.getLogger(__name__)


def owner(topic: str, partition: int, tasks: int) -> int:
    """The task, of ``tasks``, that reads a partition: a topic's partitions go round the
    tasks from one its name picks. A partition added to a topic, or a topic added to a
    pattern, never moves a partition that a task reads already (a task that lost one would
    keep its state and retries, and could move the committed offset back later), and the
    first partitions of many small topics do not all land on task 0."""
    return (partition + stable_hash(topic)) % tasks


def topic_problem(name: str, metadata: TopicMetadata | None) -> str | None:
    """Why a topic the spout names cannot be read, None if it can: unknown to the broker,
    or the error of its metadata in the broker's words (``Topic authorization failed``,
    say, which is no unknown topic)."""
    error = None if metadata is None else metadata.error
    if metadata is None or (error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
        return f"unknown topic {name!r}"
    return None if error is None else f"topic {name!r}: {error.str()}"


def partition_name(key: Key) -> str:
    """A partition as checkpoint positions and metric labels name it: ``topic/partition``."""
    return f"{key[0]}/{key[1]}"


@dataclass(frozen=True)
class Change:
    """A new share of partitions for the task (:meth:`Assignment.change`)."""

    mine: list[Key]
    """Every partition the task reads from now on, in (topic, partition) order."""
    starts: dict[Key, int]
    """Where each partition that joins starts."""
    ends: dict[Key, int]
    """The high watermark of each partition that joins."""
    left: list[Key]
    """The partitions the task no longer reads."""


class Assignment:
    """One task's partitions (``assigned``, None until the first assignment succeeded) and
    the bookkeeping of each (``partitions``: records taken and not done, commit points),
    which the fetcher and the commits share."""

    def __init__(self, name: str, topics: Sequence[str], pattern: str | None, index: int, tasks: int,
                 start: str) -> None:
        self.name = name
        """The spout's, for the logs: ``<topology>-<component>``."""
        self.topics, self.pattern = list(topics), pattern
        self.index, self.tasks, self.start = index, tasks, start
        self.assigned: list[Key] | None = None
        self.partitions: dict[Key, PartitionOffsets] = {}
        self.started: dict[Key, int] = {}
        """Where the task started each of its partitions (a seek to positions without the
        partition goes back there)."""
        self.sought: dict[str, int] = {}
        """Positions of the last seek for partitions not assigned yet: where they start."""

    def owns(self, partition: str) -> bool:
        """Whether ``"topic/partition"`` is of the spout's topics and this task's."""
        topic, _, number = partition.rpartition("/")
        ours = re.fullmatch(self.pattern, topic) if self.pattern is not None else topic in self.topics
        return bool(ours) and owner(topic, int(number), self.tasks) == self.index

    async def change(self, consumer: Consumer) -> Change | None:
        """Ask the broker for the spout's partitions: the change to this task's share, or
        None if there is none. Raises what the broker answered if a topic named cannot
        be read (:func:`topic_problem`) or a request failed."""
        found = await self._topic_partitions(consumer)
        mine = [(topic, p) for topic, p in found if owner(topic, p, self.tasks) == self.index]
        if mine == self.assigned:
            return None
        new = [key for key in mine if key not in self.partitions]
        starts, ends = await blocking(self._offsets, consumer, new)
        return Change(mine, starts, ends, [key for key in self.assigned or () if key not in mine])

    async def _topic_partitions(self, consumer: Consumer) -> list[Key]:
        """Every partition of the spout's topics, in (topic, partition) order, from fresh
        metadata: of its one topic, or of every topic (a pattern may match a topic created
        since)."""
        one = self.topics[0] if len(self.topics) == 1 else None
        topics = (await blocking(consumer.list_topics, one, BROKER_TIMEOUT)).topics
        if self.pattern is not None:
            names = sorted(t for t in topics if re.fullmatch(self.pattern, t))
        else:
            problems = [problem for t in self.topics if (problem := topic_problem(t, topics.get(t)))]
            if problems:
                raise LookupError(problems[0])
            names = self.topics
        return [(topic, partition) for topic in names for partition in sorted(topics[topic].partitions)]

    def _offsets(self, consumer: Consumer, keys: list[Key]) -> tuple[dict[Key, int], dict[Key, int]]:
        """(where to start, the high watermark) of new partitions: the committed offset,
        else the earliest or latest one (see :func:`.start_offset`). Blocking: run it in a
        worker thread."""
        if not keys:
            return {}, {}
        committed = consumer.committed([TopicPartition(t, p) for t, p in keys], timeout=BROKER_TIMEOUT)
        reset = self.start if self.assigned is None else "earliest"  # found late: see the module docstring
        starts, ends = {}, {}
        for tp in committed:
            key = (tp.topic, tp.partition)
            low, high = consumer.get_watermark_offsets(TopicPartition(*key), timeout=BROKER_TIMEOUT)
            ends[key] = high
            starts[key] = start_offset(tp.offset, low, high, reset)  # tp.offset < 0: none committed
            if 0 <= tp.offset < low:
                log.warning("%s: %s/%d: committed offset %d is below the log's start %d (deleted by retention "
                            "before it was read): reading from %d", self.name, *key, tp.offset, low, low)
        return starts, ends

    def join(self, starts: Mapping[Key, int]) -> None:
        """Partitions join, each at its start or at the position a seek gave it."""
        for key, start in starts.items():
            self.started[key] = start
            self.partitions[key] = PartitionOffsets(start)
            sought = self.sought.pop(partition_name(key), None)
            if sought is not None:
                self.partitions[key].restart_at(sought)

    def leave(self, keys: Iterable[Key]) -> None:
        """Partitions leave: their bookkeeping is forgotten."""
        for key in keys:
            del self.partitions[key]
            self.started.pop(key, None)

    def metrics(self) -> dict[str, dict[str, int]]:
        """Per partition (``partition=TOPIC/P``): committed offset, uncommitted offsets,
        retries and dead letters."""
        partitions = {f"partition={partition_name(key)}": o for key, o in self.partitions.items()}
        return {
            "kafka.committed_offset": {label: o.committed for label, o in partitions.items()},
            "kafka.uncommitted": {label: o.uncommitted() for label, o in partitions.items()},
            "kafka.retries": {label: o.retries for label, o in partitions.items()},
            "kafka.dead_letters": {label: o.dead_letters for label, o in partitions.items()},
        }

    def seek(self, positions: Mapping[str, Any]) -> dict[Key, int]:
        """Restart each partition at ``positions["topic/partition"]``, or where the task
        started it if the key is missing, and keep the other positions for partitions that
        join later. Returns where each partition restarts."""
        names = {key: partition_name(key) for key in self.partitions}
        mine = set(names.values())
        self.sought = {partition: int(offset) for partition, offset in positions.items() if partition not in mine}
        to = {key: int(positions.get(partition, self.started[key])) for key, partition in names.items()}
        for key, offset in to.items():
            self.partitions[key].restart_at(offset)
        return to
