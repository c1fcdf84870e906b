"""KafkaBolt: writes tuples to Kafka and acks each only once the broker has it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Mapping, Sequence

from aiokafka import AIOKafkaProducer
from streamflow_connectors.kafka.records import encoder

from streamflow import AsyncBolt, TaskContext, Tuple

log = logging.getLogger(__name__)

CONNECT_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)


class KafkaBolt(AsyncBolt):
    """Produces one record per input tuple, with acks=all.

    The topic is fixed (``topic``) or taken per tuple from ``topic_field``; the key from
    ``key_field`` (as UTF-8 text, or bytes as they are); the value is ``value_field`` or,
    by default, the whole tuple as a dict, encoded as ``value_format`` (json, str,
    bytes). Sends of a batch share the producer's batching; the bolt awaits them at the
    end of the batch, acks each tuple whose write the broker acknowledged, and fails the
    others, which their spout replays. An unreachable broker does not stop the task: its
    tuples fail (the error shows in ``status``) and the bolt connects again, with backoff.
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
        linger_ms: int = 5,
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
        self.linger_ms = linger_ms

    async def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self._encode = encoder(self.value_format)
        self._client_id = self.client_id or f"{context.topology}-{context.component}"
        self._producer: AIOKafkaProducer | None = None
        self._connect_attempts = 0
        self._next_connect = 0.0
        self._sent: list[tuple[Tuple, asyncio.Future[Any]]] = []
        self.produced = 0
        try:
            await self._connect()
        except ConnectionError as exc:  # not fatal: the first tuples fail, and it tries again
            log.warning("%s: %s", self._client_id, exc)

    async def _connect(self) -> None:
        """Start the producer; on failure raise ConnectionError and try again only after a
        backoff (the tuples that come meanwhile fail at once)."""
        now = time.monotonic()
        if now < self._next_connect:
            raise ConnectionError(f"Kafka at {self.bootstrap_servers} is unreachable; "
                                  f"connecting again in {self._next_connect - now:.1f} s")
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers, acks="all", linger_ms=self.linger_ms,
            client_id=self._client_id,
        )
        try:
            await producer.start()
        except Exception as exc:
            await asyncio.sleep(0)
            with contextlib.suppress(Exception):
                await producer.stop()
            delay = CONNECT_BACKOFF[min(self._connect_attempts, len(CONNECT_BACKOFF) - 1)]
            self._connect_attempts += 1
            self._next_connect = now + delay
            raise ConnectionError(f"Kafka at {self.bootstrap_servers}: {exc}; retrying in {delay:g} s") from exc
        self._producer, self._connect_attempts = producer, 0

    async def process(self, tup: Tuple) -> None:
        if self._producer is None:
            await self._connect()
            assert self._producer is not None
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
        self._sent.append((tup, await self._producer.send(topic, self._encode(value), key=key)))

    async def end_batch(self) -> None:
        if not self._sent:
            return
        sent, self._sent = self._sent, []
        results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        failure = None
        for (tup, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                self.fail(tup)
                failure = result
            else:
                self.ack(tup)
                self.produced += 1
        if failure is not None:
            raise failure  # counted and kept as the component's last error

    def metrics(self) -> dict[str, float]:
        return {"kafka.produced_records": self.produced}

    async def cleanup(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
