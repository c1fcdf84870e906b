"""The spout's commits: each partition's commit point, under the spout's group id.

A record's offset is committed only when it and every earlier record of its partition are
done (:mod:`.offsets`), so a task that dies resumes from the committed offsets: nothing is
lost, and what is read again is bounded by what was uncommitted. Commits are asked for
every ``commit_interval`` seconds, without waiting: the broker's answer comes later,
through ``consume()``, to :meth:`Commits.committed`. The last commit, at close, waits a
little for its answer (:meth:`Commits.final`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from streamflow_connectors.kafka.assignment import Assignment
from streamflow_connectors.kafka.client import ClientErrors
from streamflow_connectors.kafka.offsets import Key, PartitionOffsets

log = logging.getLogger(__name__)

COMMIT_WAIT = 5.0
"""Seconds ``close`` waits for its last commit (and the spout's dead letters) to be
acknowledged."""
RECOMMIT_INTERVAL = 3600.0
"""Seconds between commits of every assigned partition's commit point, moved or not. A
broker expires the committed offsets of a group that has no members after
``offsets.retention.minutes`` (7 days by default), and the spout's group never has
members, as it assigns its partitions itself: without this, the offset of a partition
that had nothing new for a week would expire, and a restart would read it from ``start``
again. An hour is far below any retention in use, and costs one request an hour."""
ANSWER_POLL = 0.01
"""Seconds between looks for the answer to the final commit."""


class Commits:
    """Commits the points of an :class:`.Assignment`'s partitions and keeps the broker's
    answers in their bookkeeping; errors go to ``errors``, to show in status."""

    def __init__(self, assignment: Assignment, errors: ClientErrors, interval: float) -> None:
        self.assignment, self.errors, self.interval = assignment, errors, interval
        self.next_at = 0.0
        """When the next periodic commit is due (``time.monotonic()``)."""
        self._next_again = time.monotonic() + RECOMMIT_INTERVAL

    def settings(self) -> dict[str, Any]:
        """The consumer's librdkafka settings for commits: only the ones asked for, with
        their answers to :meth:`committed`."""
        return {"enable.auto.commit": False, "enable.auto.offset.store": False, "on_commit": self.committed}

    def periodic(self, consumer: Consumer, now: float) -> None:
        """The periodic commit, due once ``now`` reaches :attr:`next_at` (the caller checks,
        as it does for every record): every point that moved, or each
        :data:`RECOMMIT_INTERVAL` every point; the next is due an interval on."""
        self.next_at = now + self.interval
        again = now >= self._next_again
        if again:
            self._next_again = now + RECOMMIT_INTERVAL
        self.commit(consumer, again=again)

    def commit(self, consumer: Consumer, keys: Iterable[Key] | None = None,
               again: bool = False) -> list[PartitionOffsets]:
        """Ask the broker to commit the new commit point of every assigned partition (or of
        ``keys``), or with ``again`` every point (see :data:`RECOMMIT_INTERVAL`). Returns
        the partitions asked for."""
        sent = []
        offsets = []
        partitions = self.assignment.partitions
        for key in (self.assignment.assigned or ()) if keys is None else keys:
            partition = partitions[key]
            point = partition.to_commit(again)
            if point is not None:
                partition.commit_asked(point)
                sent.append(partition)
                offsets.append(TopicPartition(key[0], key[1], point))
        if offsets:
            consumer.commit(offsets=offsets, asynchronous=True)
        return sent

    def committed(self, error: KafkaError | None, answered: list[TopicPartition]) -> None:
        """The broker's answer to a commit (``on_commit``): confirmed points become the
        committed offsets; failed ones are asked for again at the next commit, and the
        error, of the request or of a partition, shows in status."""
        for tp in answered:
            partition = self.assignment.partitions.get((tp.topic, tp.partition))
            if partition is None:
                continue
            if error is None and tp.error is None:
                partition.commit_confirmed(tp.offset)
            else:
                partition.commit_failed()
                if tp.error is not None:
                    self.errors(tp.error)
        if error is not None:
            self.errors(error)

    async def final(self, consumer: Consumer) -> None:
        """Commit and wait up to :data:`COMMIT_WAIT` for the broker's answer, which
        ``consume()`` serves (every partition is paused first, so it returns no record).
        A commit that failed or got no answer is one warning: nothing asks for it again,
        and a restart reads the records since the last commit again."""
        consumer.pause([TopicPartition(t, p) for t, p in self.assignment.assigned or ()])
        self.errors.last = None  # from here on, the commit's
        asked = [(partition, partition.commit_sent) for partition in self.commit(consumer)]
        deadline = time.monotonic() + COMMIT_WAIT
        # Unanswered: still asked for (a failure sets commit_sent back) and not confirmed.
        while any(p.commit_sent >= point > p.committed for p, point in asked) and time.monotonic() < deadline:
            consumer.consume(1, timeout=0)
            await asyncio.sleep(ANSWER_POLL)
        uncommitted = sum(p.committed < point for p, point in asked)
        if uncommitted:
            error = self.errors.last
            log.warning("%s: the final commit of %d partitions failed (%s)", self.assignment.name, uncommitted,
                        f"no answer within {COMMIT_WAIT:g} s" if error is None else error.str())
