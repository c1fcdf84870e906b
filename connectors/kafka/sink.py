"""KafkaBolt: writes tuples to Kafka and acks each only once the broker has it."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, Mapping, Sequence

from confluent_kafka import KafkaError, Producer
from streamflow_connectors.kafka.client import ClientErrors, KafkaClientError, blocking, settings
from streamflow_connectors.kafka.records import encoder

from streamflow import AsyncBolt, TaskContext, Tuple

DELIVERY_POLL = 0.001
"""Seconds between looks for delivery reports while a batch waits for them: about what a
broker on the same network takes to acknowledge a write."""


class KafkaBolt(AsyncBolt):
    """Produces one record per input tuple, with acks=all.

    The topic is fixed (``topic``) or taken per tuple from ``topic_field``; the key from
    ``key_field`` (as UTF-8 text, or bytes as they are); the value is ``value_field`` or,
    by default, the whole tuple as a dict, encoded as ``value_format`` (json, str,
    bytes). ``config`` adds librdkafka settings (``security.protocol``, ``sasl.*``,
    ``compression.type``...).

    The writes of a batch share librdkafka's batching (``linger_ms``); at the end of the
    batch the bolt waits, without blocking the event loop, for the broker's answer to each:
    it acks each tuple whose write the broker acknowledged and fails the others, which
    their spout replays. A write the broker has not acknowledged within
    ``delivery_timeout`` seconds fails (an unreachable broker does not stop the task: its
    tuples fail, the error shows in ``status``, and librdkafka reconnects by itself).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str | None = None,
        *,
        topic_field: str | None = None,
        key_field: str | None = None,
        value_field: str | None = None,
        fields: Sequence[str] | None = None,
        value_format: str = "json",
        client_id: str | None = None,
        linger_ms: float = 5,
        delivery_timeout: float = 10.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if (topic is None) == (topic_field is None):
            raise ValueError("KafkaBolt needs a topic or a topic_field, not both")
        encoder(value_format)  # refuse an unknown format now, not in a worker
        self.bootstrap_servers = bootstrap_servers
        self.topic, self.topic_field = topic, topic_field
        self.key_field, self.value_field = key_field, value_field
        self.fields = tuple(fields) if fields else None
        self.value_format = value_format
        self.client_id = client_id
        self.linger_ms, self.delivery_timeout = linger_ms, delivery_timeout
        self.client_config = dict(config or {})

    async def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self._encode = encoder(self.value_format)
        client_id = self.client_id or f"{context.topology}-{context.component}"
        self._errors = ClientErrors(self.bootstrap_servers)
        self._producer = Producer(settings(
            self.bootstrap_servers, client_id, self._errors, self.client_config,
            **{"acks": "all", "linger.ms": self.linger_ms,
               "message.timeout.ms": int(self.delivery_timeout * 1000)}))
        self._unanswered = 0
        self._failed: list[KafkaError] = []
        self.produced = self.produced_bytes = self.delivery_errors = 0

    async def process(self, tup: Tuple) -> None:
        topic = self.topic if self.topic is not None else tup[self.topic_field]  # type: ignore[index]
        key = tup[self.key_field] if self.key_field else None
        if isinstance(key, str):
            key = key.encode("utf-8")
        elif key is not None and not isinstance(key, bytes):
            key = str(key).encode("utf-8")
        if self.value_field is not None:
            value = tup[self.value_field]
        elif self.fields is not None:
            value = {f: tup[f] for f in self.fields}
        else:
            value = tup.as_dict()
        self._producer.produce(topic, self._encode(value), key, on_delivery=partial(self._delivered, tup))
        self._unanswered += 1

    def _delivered(self, tup: Tuple, error: KafkaError | None, message: Any) -> None:
        """The broker's answer to one write (a delivery report, served by ``poll``)."""
        self._unanswered -= 1
        if error is None:
            self.ack(tup)
            self.produced += 1
            self.produced_bytes += len(message) + len(message.key() or b"")
        else:
            self.fail(tup)
            self.delivery_errors += 1
            self._failed.append(error)

    async def end_batch(self) -> None:
        """Wait for the answers to the batch's writes (librdkafka fails a write after
        ``delivery_timeout``, so this ends); raise once if any write failed."""
        if not self._unanswered:
            return
        self._producer.poll(0)
        while self._unanswered:
            await asyncio.sleep(DELIVERY_POLL)
            self._producer.poll(0)
        if self._failed:
            failed, self._failed = self._failed, []
            client = f"; last client error: {self._errors.last.str()}" if self._errors.last is not None else ""
            self._errors.last = None
            raise KafkaClientError(f"Kafka at {self.bootstrap_servers}: {len(failed)} writes failed: "
                                   f"{failed[-1].str()}{client}")

    def metrics(self) -> dict[str, float]:
        return {"kafka.produced_records": self.produced, "kafka.produced_bytes": self.produced_bytes,
                "kafka.delivery_errors": self.delivery_errors}

    async def cleanup(self) -> None:
        """Close the producer. Writes still unanswered (the task stopped mid-batch) are
        dropped: their tuples are not acked, so their spouts replay them."""
        self._producer.purge()
        self._producer.poll(0)
        await blocking(self._producer.close)
