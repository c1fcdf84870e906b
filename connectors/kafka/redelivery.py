"""What becomes of a record whose tuple failed: it is emitted again after its back-off
(:mod:`.retry`), and after its last retry it goes to the dead letters (:mod:`.deadletters`),
whose write must be acknowledged before its offset may be committed.

Failures are counted per record across seeks: a record that failed past its last retry
goes to the dead letters when it is read again, rather than being emitted, so that a
poison record cannot roll a checkpointed topology back for ever.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

from streamflow_connectors.kafka.assignment import Assignment
from streamflow_connectors.kafka.deadletters import DeadLetters
from streamflow_connectors.kafka.offsets import Key
from streamflow_connectors.kafka.records import Message
from streamflow_connectors.kafka.retry import Backoff, RetrySchedule

MsgId = tuple[str, int, int]
"""A record's message id: topic, partition, offset."""


def msg_id(message: Message) -> MsgId:
    """The message id the spout emits a record with, and its retries are kept under."""
    return message.topic(), message.partition(), message.offset()


class Redelivery:
    """The retries and dead letters of one spout task's records. ``checkpointed``: the
    engine seeks the spout (a topology with checkpointed state), so a record that failed
    past its last retry may be read again, and its failure count must stay."""

    def __init__(self, assignment: Assignment, backoff: Backoff, bootstrap_servers: str,
                 dead_letter_topic: str | None, client_id: str, extra: Mapping[str, Any] | None) -> None:
        self.assignment, self.backoff = assignment, backoff
        self.retries: RetrySchedule[MsgId] = RetrySchedule(backoff)
        self.dead = DeadLetters(bootstrap_servers, dead_letter_topic, client_id, extra, self.dead_lettered)
        self.checkpointed = False

    def idle(self) -> bool:
        """Whether no retry is scheduled and no dead letter awaits its write."""
        return not self.dead and not len(self.retries)

    def due(self, now: float) -> Message | None:
        """The next record whose retry is due, counted as a retry of its partition; None
        if none is."""
        due_at = self.retries.next_due()
        if due_at is None or due_at > now:
            return None
        while due := self.retries.due(now, limit=1):
            topic, partition, offset = due[0]
            offsets = self.assignment.partitions.get((topic, partition))
            record = None if offsets is None else offsets.record(offset)  # None: done, or its partition left
            if offsets is not None and record is not None:
                offsets.retries += 1
                return record
        return None

    def exhausted(self, message: Message) -> bool:
        """Whether the record failed past its last retry before (a seek read it again):
        if so, it goes to the dead letters now."""
        if not self.retries.failures:
            return False
        failures = self.retries.failures.get(msg_id(message), 0)
        if not self.backoff.exhausted(failures):
            return False
        self.dead.add(message, f"failed {failures} times")
        return True

    def acked(self, key: MsgId) -> None:
        if self.retries.failures:
            self.retries.forget(key)

    def failed(self, key: MsgId, now: float) -> None:
        """Schedule the record's retry, or send it to the dead letters after its last."""
        topic, partition, offset = key
        offsets = self.assignment.partitions.get((topic, partition))
        if offsets is None:  # its partition left this task: another reads it from the last commit
            self.retries.forget(key)
            return
        if self.retries.failed(key, now):
            return
        record = offsets.record(offset)
        if record is not None:
            self.dead.add(record, f"failed {self.retries.failures[key]} times")
        if not self.checkpointed:  # else a seek may read it again: its count sends it to the dead letters
            self.retries.forget(key)

    def dead_lettered(self, message: Message) -> None:
        """The dead-letter path is done with a record: its offset may be committed."""
        offsets = self.assignment.partitions.get((message.topic(), message.partition()))
        if offsets is not None:  # else its partition left this task
            offsets.dead_letters += 1
            if offsets.record(message.offset()) is message:  # else a seek since read it again: not done
                offsets.done(message.offset())

    def lower(self, positions: dict[Key, int]) -> None:
        """Move each partition's position (first offset not emitted) down to its first
        record waiting for a retry."""
        for topic, partition, offset in self.retries.scheduled():
            if offset < positions.get((topic, partition), -1):
                positions[topic, partition] = offset

    def seek(self, to: Mapping[Key, int]) -> None:
        """The partitions are read again from ``to``: scheduled retries and dead letters
        not written yet of the records read again are dropped; failure counts stay."""
        self.retries.unschedule()
        # No later seek goes below this one (checkpoints only move on): counts below it are done with.
        failures = self.retries.failures
        self.retries.failures = {key: n for key, n in failures.items() if key[2] >= to.get(key[:2], 0)}
        self.dead.drop(lambda m: m.offset() >= to.get((m.topic(), m.partition()), m.offset() + 1))

    def forget(self, gone: Set[Key]) -> None:
        """Partitions left this task: their retries and failure counts go."""
        self.retries.drop(lambda key: key[:2] in gone)
