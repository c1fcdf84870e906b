"""The spout's dead-letter path: records past their last retry, or undecodable, go to a
dead-letter topic with their origin in headers, or are counted and dropped if none is set.

A record is done (its offset may be committed) only once the broker acknowledged its
dead letter: a write that fails keeps the record, and the next round sends it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any, Callable, Mapping

from confluent_kafka import KafkaError, Producer
from streamflow_connectors.kafka.client import ClientErrors, KafkaClientError, settings
from streamflow_connectors.kafka.client import reason as error_reason  # 'reason' is a dead letter's, here
from streamflow_connectors.kafka.records import Message

log = logging.getLogger(__name__)

FLUSH_POLL = 0.01
"""Seconds between checks for delivery reports while :meth:`DeadLetters.drain` waits."""


class DeadLetters:
    """Dead letters of one spout task, written without waiting: :meth:`send` produces what
    :meth:`add` queued, and ``done(message)`` is called for each once the broker has it
    (or at once when there is no dead-letter topic)."""

    def __init__(self, bootstrap_servers: str, topic: str | None, client_id: str,
                 extra: Mapping[str, Any] | None, done: Callable[[Message], None]) -> None:
        self.topic, self.client_id = topic, client_id
        self._done = done
        self._errors = ClientErrors(bootstrap_servers)
        self._settings = settings(bootstrap_servers, client_id, self._errors, extra, acks="all")
        self._producer: Producer | None = None
        self._queued: list[tuple[Message, str]] = []
        self._unconfirmed = 0
        self._failure: str | None = None

    def __len__(self) -> int:
        """Records queued or written and not yet acknowledged."""
        return len(self._queued) + self._unconfirmed

    def add(self, message: Message, reason: str) -> None:
        """Queue a record for the dead-letter path, with why it is there."""
        self._queued.append((message, reason))

    def drop(self, gone: Callable[[Message], bool]) -> None:
        """Take back the queued records ``gone`` says, not written yet (a seek reads them
        again, and they take the dead-letter path again then). Records already written
        wait for their delivery report."""
        self._queued = [(message, reason) for message, reason in self._queued if not gone(message)]

    def send(self) -> None:
        """Write the queued records (or drop them, without a topic) and serve delivery
        reports; raise the first write failure since the last call, as one line."""
        queued, self._queued = self._queued, []
        for i, (message, reason) in enumerate(queued):
            if self.topic is None:
                self._drop(message, reason)
                continue
            try:
                self._write(message, reason)
            except Exception:
                self._queued[:0] = queued[i:]  # the next round sends these again
                raise
        if self._producer is not None:
            self._producer.poll(0)
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise KafkaClientError(failure)
        self._errors.raise_last()

    async def drain(self, timeout: float) -> None:
        """Write what is queued and wait (without blocking the loop) up to ``timeout``
        seconds for the broker to acknowledge it: at close, so that the records' offsets
        can be committed. What is left unwritten is logged as one warning: nothing writes
        it later, and a restart reads those records again."""
        deadline = time.monotonic() + timeout
        why = None
        try:
            self.send()
        except Exception as exc:
            why = error_reason(exc)
        while self._unconfirmed and time.monotonic() < deadline and self._producer is not None:
            self._producer.poll(0)
            await asyncio.sleep(FLUSH_POLL)
        if self:
            log.warning("%s: %d dead letters not written at close (%s): a restart reads their records again",
                        self.client_id, len(self), why or self._failure or f"no answer within {timeout:g} s")

    def _drop(self, message: Message, reason: str) -> None:
        log.warning("%s: dropped %s/%d@%d: %s (no dead-letter topic)", self.client_id,
                    message.topic(), message.partition(), message.offset(), reason)
        self._done(message)

    def _write(self, message: Message, reason: str) -> None:
        assert self.topic is not None
        if self._producer is None:
            self._producer = Producer(self._settings)
        headers = [("origin.topic", message.topic().encode()),
                   ("origin.partition", str(message.partition()).encode()),
                   ("origin.offset", str(message.offset()).encode()),
                   ("error", reason.encode("utf-8", "replace")[:1000])]
        self._producer.produce(self.topic, message.value(), message.key(), headers=headers,
                               on_delivery=partial(self._delivered, message, reason))
        self._unconfirmed += 1

    def _delivered(self, message: Message, reason: str, error: KafkaError | None, _: Any) -> None:
        """A delivery report (served by ``poll``): done, or queued again after a failure."""
        self._unconfirmed -= 1
        if error is None:
            self._done(message)
        else:
            self._queued.append((message, reason))
            self._failure = (f"Kafka at {self._errors.bootstrap_servers}: dead letter to "
                             f"{self.topic!r} failed: {error.str()}")
