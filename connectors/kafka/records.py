"""Turning Kafka records into tuple values, and tuple values into Kafka records."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import orjson

DEFAULT_FIELDS = ("topic", "partition", "offset", "key", "value", "timestamp")
FORMATS = ("json", "str", "bytes")


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
    """The function that turns a Python value into a record's value bytes."""
    if value_format == "bytes":
        return lambda value: value
    if value_format == "str":
        return lambda value: None if value is None else str(value).encode("utf-8")
    if value_format == "json":
        return lambda value: orjson.dumps(value)
    raise ValueError(f"unknown value format {value_format!r} (known: {', '.join(FORMATS)})")


def key_text(key: bytes | None) -> str | bytes | None:
    """A record key as text when it is UTF-8 (the common case), else as bytes."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key


def default_values(record: Any, value: Any) -> Sequence[Any]:
    """The tuple of a record under :data:`DEFAULT_FIELDS`."""
    return (record.topic, record.partition, record.offset, key_text(record.key), value, record.timestamp)
