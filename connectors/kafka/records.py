"""Turning Kafka records into tuple values, and tuple values into Kafka records."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError

DEFAULT_FIELDS = ("topic", "partition", "offset", "key", "value", "timestamp")
FORMATS = ("json", "str", "bytes")


class Message(Protocol):
    """A record as ``Consumer.consume()`` returns it (a ``confluent_kafka.Message``), typed
    as it is once ``error()`` is None: topic, partition and offset are set then (the
    library's own types allow None for all three, for error events)."""

    def error(self) -> KafkaError | None: ...
    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...
    def __len__(self) -> int: ...


class UndecodableRecord(ValueError):
    """A record whose value cannot be decoded: it is dead-lettered, never retried."""


def decoder(value_format: str) -> Callable[[bytes | None], Any]:
    """The function that turns a record's value bytes into a Python value."""
    if value_format == "bytes":
        return lambda raw: raw
    if value_format == "str":
        def decode_str(raw: bytes | None) -> Any:
            try:
                return None if raw is None else raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UndecodableRecord(f"value is not UTF-8: {exc}") from None
        return decode_str
    if value_format == "json":
        def decode_json(raw: bytes | None) -> Any:
            try:
                return None if raw is None else orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise UndecodableRecord(f"value is not JSON: {exc}") from None
        return decode_json
    raise ValueError(f"unknown value format {value_format!r} (known: {', '.join(FORMATS)})")


def encoder(value_format: str) -> Callable[[Any], bytes | None]:
    """The function that turns a Python value into a record's value bytes (or None): the
    sink counts the bytes it hands to librdkafka."""
    if value_format == "bytes":
        return _bytes_value
    if value_format == "str":
        return lambda value: None if value is None else str(value).encode("utf-8")
    if value_format == "json":
        return orjson.dumps  # itself, not wrapped: the sink calls it for every record
    raise ValueError(f"unknown value format {value_format!r} (known: {', '.join(FORMATS)})")


def _bytes_value(value: Any) -> bytes | None:
    """A value under the "bytes" format: bytes as they are, text as UTF-8 (what librdkafka
    would send for it), None as None; anything else is refused, which fails its tuple."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"value format 'bytes' takes bytes, str or None, not {type(value).__name__}")


def key_text(key: bytes | None) -> str | bytes | None:
    """A record key as text when it is UTF-8 (the common case), else as bytes."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key


def timestamp_ms(message: Message) -> int | None:
    """A record's timestamp in milliseconds since the epoch, None if it has none."""
    kind, stamp = message.timestamp()
    return None if kind == TIMESTAMP_NOT_AVAILABLE else int(stamp)


def default_values(message: Message, value: Any) -> Sequence[Any]:
    """The tuple of a record under :data:`DEFAULT_FIELDS`."""
    return (message.topic(), message.partition(), message.offset(), key_text(message.key()), value,
            timestamp_ms(message))


class Record:
    """A consumed record as a spout's ``record_to_values`` function sees it: ``topic``,
    ``partition``, ``offset``, ``key`` and ``value`` (bytes), ``timestamp`` (ms) and
    ``headers`` (``[(name, bytes)]``).

    Each attribute is read from the client's message when asked, not before: most such
    functions read only the value, and this runs once per record."""

    __slots__ = ("message",)

    def __init__(self, message: Message) -> None:
        self.message = message

    @property
    def topic(self) -> str:
        return self.message.topic()

    @property
    def partition(self) -> int:
        return self.message.partition()

    @property
    def offset(self) -> int:
        return self.message.offset()

    @property
    def key(self) -> bytes | None:
        return self.message.key()

    @property
    def value(self) -> bytes | None:
        return self.message.value()

    @property
    def timestamp(self) -> int | None:
        return timestamp_ms(self.message)

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return list(self.message.headers() or ())
