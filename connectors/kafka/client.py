"""What the spout and the sink share about their librdkafka clients (confluent-kafka).

librdkafka does its network I/O in threads of its own: it fetches ahead into a local queue
and batches writes. The connectors call it only from the event loop thread, with calls that
return at once (``consume(timeout=0)``, ``produce()``, ``poll(0)``); the few calls that wait
on the broker (metadata, committed offsets, watermarks) run in a worker thread
(:func:`blocking`). Callbacks (delivery reports, commit results, errors) run inside those
non-blocking calls, so on the loop thread too.

librdkafka retries every connection by itself; the connectors only report what it saw
(:class:`ClientErrors`), as one line, through the component's last error.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Mapping, TypeVar

from confluent_kafka import KafkaError, KafkaException

from streamflow.backoff import Backoff
from streamflow.errors import StreamflowError

T = TypeVar("T")

CONNECT_BACKOFF = Backoff(initial=0.5, multiplier=2.0, maximum=10.0)
"""Seconds before each attempt to reach a broker that did not answer: soon after a
blip, and at most every 10 s in an outage."""

BROKER_TIMEOUT = 5.0
"""Seconds a metadata, committed-offset or watermark request may take before it counts as
failed: long enough for a broker under load, short enough to report an outage soon."""

librdkafka_log = logging.getLogger("streamflow_connectors.kafka.librdkafka")


class _DebugLog:
    """librdkafka's own log lines, at DEBUG whatever their level: it logs every failed
    reconnect (several a second in an outage), while :class:`ClientErrors` reports the
    outage once per attempt of the connector, through the engine's rate-limited errors."""

    def log(self, level: int, msg: str, *args: Any) -> None:
        librdkafka_log.debug(msg, *args)


class ClientErrors:
    """The last error a client reported (``error_cb``, or an error event from
    ``consume()``), kept until :meth:`raise_last` raises it as one line naming the broker.

    Only the last is kept: in an outage librdkafka reports each reconnect attempt."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.last: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        self.last = error

    def raise_last(self) -> None:
        """Raise the error reported since the last call, if any."""
        if self.last is not None:
            error, self.last = self.last, None
            raise KafkaClientError(f"Kafka at {self.bootstrap_servers}: {error.str()}")


class KafkaClientError(StreamflowError):
    """A Kafka client or broker error, as one line: ``Kafka at HOST:PORT: what happened``
    (so the CLI prints it as it is, and a task's log never adds a traceback)."""


def reason(exc: BaseException) -> str:
    """An exception as the one-line reason an error message quotes (a librdkafka
    ``KafkaException`` carries a ``KafkaError`` whose ``str()`` is the readable part)."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return str(exc.args[0].str())
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # "Connection refused", not "[Errno 111] Connection refused"
    return str(exc) or type(exc).__name__


def settings(bootstrap_servers: str, client_id: str, errors: ClientErrors,
             extra: Mapping[str, Any] | None, **own: Any) -> dict[str, Any]:
    """librdkafka settings for one client: the connectors' own, then the user's ``extra``
    (security settings, tuning), which win."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "client.id": client_id,
        "error_cb": errors,
        "logger": _DebugLog(),
        "log.connection.close": False,  # brokers close idle connections: not news
        **own,
        **(extra or {}),
    }


async def blocking(call: Callable[..., T], *args: Any) -> T:
    """Run a librdkafka call that waits on the broker in a worker thread, so that the
    event loop (and every other task of the worker) goes on meanwhile."""
    return await asyncio.to_thread(call, *args)
