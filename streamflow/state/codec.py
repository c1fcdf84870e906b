"""How state keys and values become bytes, for a durable store and for checkpoints.

JSON (orjson), so that state is data and never code, and reads the same from any Python
version or from ``redis-cli``. A key is a str, an int, a float, a bool, None, or a tuple
of those (a key of several grouped fields); a value is anything JSON holds: str, numbers,
bool, None, and lists and dicts (str keys) of them. A tuple value comes back as a list;
a tuple key comes back as a tuple (a JSON array key can only have been a tuple, as a
list cannot be a key).
"""

from __future__ import annotations

import math
from typing import Any, Hashable

import orjson

from streamflow.errors import StreamflowError

KEY_TYPES = "str, int, float, bool, None or a tuple of them"
VALUE_TYPES = "str, int, float, bool, None, or lists and dicts (str keys) of them"


class StateCodecError(StreamflowError, TypeError):
    """A key or value the state codec cannot encode: one line that names the type."""


def encode_key(key: Hashable) -> bytes:
    """The bytes of ``key``; raises :class:`StateCodecError` for a type state cannot hold."""
    kind = type(key)
    if kind is tuple:
        for part in key:  # type: ignore[attr-defined]
            if type(part) not in (str, int, float, bool) and part is not None:
                raise StateCodecError(
                    f"state key part of type {type(part).__name__} cannot be encoded (keys are {KEY_TYPES})")
    elif not (kind is str or kind is int or kind is float or kind is bool or key is None):
        raise StateCodecError(f"state key of type {kind.__name__} cannot be encoded (keys are {KEY_TYPES})")
    return _dumps(key, "key")


def _dumps(item: Any, what: str) -> bytes:
    """orjson's bytes of ``item``, refusing what JSON would not give back: a number that
    is not finite (orjson writes null) or an int beyond 64 bits."""
    try:
        data = orjson.dumps(item)
    except TypeError as exc:
        if "Integer exceeds" in str(exc):
            raise StateCodecError(f"state {what}: an int beyond 64 bits cannot be encoded") from None
        raise
    if b"null" in data and _not_finite(item):
        raise StateCodecError(f"state {what}: inf and nan cannot be encoded (JSON has no such numbers)")
    # A copy of exactly its size: orjson's own result keeps a block of about 4 KiB alive
    # (100,000 kept results of 112 bytes took 393 MiB), and state keeps what it encodes.
    return bytes(memoryview(data))


def _not_finite(item: Any) -> bool:
    """Whether ``item`` holds inf or nan (the rare path: its JSON holds a null)."""
    if type(item) is float:
        return not math.isfinite(item)
    if isinstance(item, dict):
        return any(_not_finite(v) for v in item.values())
    if isinstance(item, (list, tuple)):
        return any(_not_finite(v) for v in item)
    return False


def decode_key(data: bytes) -> Hashable:
    key = orjson.loads(data)
    return tuple(key) if type(key) is list else key


def encode_value(value: Any) -> bytes:
    """The bytes of ``value``; raises :class:`StateCodecError` naming the first type that
    JSON cannot hold."""
    try:
        return _dumps(value, "value")
    except StateCodecError:
        raise
    except TypeError:
        raise StateCodecError(
            f"state value of type {_unencodable(value)} cannot be encoded (values are {VALUE_TYPES})"
        ) from None


_INT_RANGE = range(-(1 << 63), 1 << 64)
"""The ints orjson encodes: 64 bits, signed or not."""


def encodes_as_is(value: Any) -> bool:
    """Whether ``value`` is an immutable scalar that :func:`encode_value` takes: a str, a
    bool, None, an int of 64 bits or a finite float. Its encoding can wait (it cannot change
    and cannot fail), so a state may encode it once per checkpoint instead of once per put."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return value in _INT_RANGE
    return kind is float and math.isfinite(value)


def decode_value(data: bytes) -> Any:
    return orjson.loads(data)


def _unencodable(value: Any) -> str:
    """The name of the first type in ``value`` that orjson refuses (the error path only)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{type(k).__name__} (as a dict key)"
            found = _unencodable(v)
            if found:
                return found
        return ""
    if isinstance(value, (list, tuple)):
        for v in value:
            found = _unencodable(v)
            if found:
                return found
        return ""
    try:
        orjson.dumps(value)
    except TypeError:
        return type(value).__name__
    return ""
