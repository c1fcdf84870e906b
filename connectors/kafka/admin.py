"""The broker's own client-id quotas (bytes/s), set and read over the Kafka protocol.

confluent-kafka (librdkafka) has no client-quota admin API, so :class:`QuotaAdmin` speaks
the two requests itself: ``AlterClientQuotas`` (API key 49) and ``DescribeClientQuotas``
(API key 48), both at version 0, whose encodings are the plain (non-flexible) ones. These
are quotas the broker enforces, by throttling every connection of a client id; the spout's
own records/bytes quotas (``kafka.quotas``, :mod:`.quota`) are a separate mechanism.

Plain TCP only: no SASL, no TLS. Requests go to the first bootstrap broker that accepts a
connection, as the Java admin client sends them to any broker: a KRaft broker forwards
``AlterClientQuotas`` to the controller and answers ``DescribeClientQuotas`` from its
metadata. Each request is sent only if the broker listed it at version 0 (ApiVersions).
Encoding and decoding are pure functions (``encode_*``, ``decode_*``), apart from the
socket, so that tests can check them byte for byte.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from confluent_kafka import KafkaError
from streamflow_connectors.kafka.client import KafkaClientError, reason

T = TypeVar("T")

API_VERSIONS, DESCRIBE_CLIENT_QUOTAS, ALTER_CLIENT_QUOTAS = 18, 48, 49
API_NAMES = {API_VERSIONS: "ApiVersions", DESCRIBE_CLIENT_QUOTAS: "DescribeClientQuotas",
             ALTER_CLIENT_QUOTAS: "AlterClientQuotas"}

QUOTA_KEYS = ("producer_byte_rate", "consumer_byte_rate", "request_percentage")
"""The quotas Kafka keeps for a client id: bytes/s produced, bytes/s fetched, and the
percentage of one request-handler thread's time its requests may take."""

CLIENT_ID = "client-id"
"""The entity type of a client id (Kafka's others are ``user`` and ``ip``)."""

MATCH_EXACT = 0
"""DescribeClientQuotas' match type: the entity with exactly this name."""

SETTLE_SECONDS = 3.0
"""How long :meth:`QuotaAdmin.set` waits for a describe to show its change: a KRaft broker
answers from its copy of the metadata, a moment behind the controller's."""


# ----------------------------------------------------------------------------- encoding


def _string(text: str | None) -> bytes:
    """A (nullable) STRING: int16 length (-1: null), then UTF-8 bytes."""
    if text is None:
        return struct.pack(">h", -1)
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def _array(items: list[bytes]) -> bytes:
    return struct.pack(">i", len(items)) + b"".join(items)


def _client_id_entity(client_id: str) -> bytes:
    return _array([_string(CLIENT_ID) + _string(client_id)])


def encode_request(api_key: int, correlation_id: int, client_id: str, body: bytes) -> bytes:
    """A size-prefixed request with header v1 (api_key, api_version 0, correlation_id,
    client_id): the header every non-flexible request version uses."""
    message = struct.pack(">hhi", api_key, 0, correlation_id) + _string(client_id) + body
    return struct.pack(">i", len(message)) + message


def encode_alter(client_id: str, values: Mapping[str, float], remove: Iterable[str]) -> bytes:
    """AlterClientQuotas v0's body: one entry (this client id) with an op per key, then
    validate_only false."""
    ops = [_string(key) + struct.pack(">d?", value, False) for key, value in values.items()]
    ops += [_string(key) + struct.pack(">d?", 0.0, True) for key in remove]
    return _array([_client_id_entity(client_id) + _array(ops)]) + struct.pack(">?", False)


def encode_describe(client_id: str) -> bytes:
    """DescribeClientQuotas v0's body: one component (this client id, exactly), strict (not
    the quotas of a user and this client id together)."""
    component = _string(CLIENT_ID) + struct.pack(">b", MATCH_EXACT) + _string(client_id)
    return _array([component]) + struct.pack(">?", True)


# ----------------------------------------------------------------------------- decoding


class _Reader:
    """Reads a response body field by field; a short or malformed body raises ValueError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def _unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.data):
            raise ValueError("the response ends early")
        (value,) = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return value

    def int16(self) -> int:
        return int(self._unpack(">h"))

    def int32(self) -> int:
        return int(self._unpack(">i"))

    def float64(self) -> float:
        return float(self._unpack(">d"))

    def string(self) -> str | None:
        size = self.int16()
        if size < 0:
            return None
        if self.offset + size > len(self.data):
            raise ValueError("the response ends early")
        text = self.data[self.offset:self.offset + size].decode()
        self.offset += size
        return text

    def array(self, item: Callable[[], T]) -> list[T] | None:
        count = self.int32()
        return None if count < 0 else [item() for _ in range(count)]


def _entity(reader: _Reader) -> list[tuple[str | None, str | None]]:
    return reader.array(lambda: (reader.string(), reader.string())) or []


def decode_api_versions(body: bytes) -> tuple[int, dict[int, tuple[int, int]]]:
    """ApiVersions v0's response body: (error_code, {api_key: (min_version, max_version)})."""
    reader = _Reader(body)
    error = reader.int16()
    keys = reader.array(lambda: (reader.int16(), reader.int16(), reader.int16())) or []
    return error, {key: (low, high) for key, low, high in keys}


def decode_alter(body: bytes) -> list[tuple[int, str | None]]:
    """AlterClientQuotas v0's response body: (error_code, error_message) per entry."""
    reader = _Reader(body)
    reader.int32()  # throttle_time_ms

    def entry() -> tuple[int, str | None]:
        error, message = reader.int16(), reader.string()
        _entity(reader)
        return error, message

    return reader.array(entry) or []


def decode_describe(body: bytes, client_id: str) -> tuple[int, str | None, dict[str, float]]:
    """DescribeClientQuotas v0's response body: (error_code, error_message, {key: value}
    of the entity that is exactly this client id)."""
    reader = _Reader(body)
    reader.int32()  # throttle_time_ms
    error, message = reader.int16(), reader.string()
    values: dict[str, float] = {}

    def entry() -> None:
        entity = _entity(reader)
        pairs = reader.array(lambda: (reader.string() or "", reader.float64())) or []
        if entity == [(CLIENT_ID, client_id)]:
            values.update(pairs)

    reader.array(entry)
    return error, message, values


# ----------------------------------------------------------------------------- the client


class QuotaAdmin:
    """One connection to a broker, for its client-id quotas.

    Every failure (no broker, a broker without the APIs, an error code, a malformed
    answer) raises :class:`KafkaClientError` as one line naming the bootstrap servers."""

    def __init__(self, bootstrap_servers: str, timeout: float = 10.0, client_id: str = "streamflow-admin") -> None:
        self.bootstrap_servers, self.timeout, self.client_id = bootstrap_servers, timeout, client_id
        self._sock: socket.socket | None = None
        self._correlation_id = 0
        self._versions: dict[int, tuple[int, int]] = {}

    def __enter__(self) -> QuotaAdmin:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _error(self, what: str) -> KafkaClientError:
        return KafkaClientError(f"Kafka at {self.bootstrap_servers}: {what}")

    def connect(self) -> None:
        """Connect to the first bootstrap broker that accepts, and ask which APIs it speaks."""
        reasons = []
        for address in self.bootstrap_servers.split(","):
            host, _, port = address.strip().rpartition(":")
            try:
                self._sock = socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout)
                break
            except (OSError, ValueError) as exc:
                reasons.append(f"{address.strip()}: {reason(exc)}")
        else:
            raise self._error(f"cannot connect ({'; '.join(reasons)})")
        error, self._versions = self._ask(API_VERSIONS, b"", decode_api_versions)
        if error:
            raise self._error(f"ApiVersions failed: {_error_name(error)}")

    def _require(self, api_key: int) -> None:
        """Refuse, as one line, an API that the broker did not list with version 0."""
        name = f"{API_NAMES[api_key]} (API key {api_key})"
        if api_key not in self._versions:
            raise self._error(f"the broker does not support {name}")
        low, high = self._versions[api_key]
        if not low <= 0 <= high:
            raise self._error(f"the broker supports {name} versions {low} to {high} only; "
                              "this command speaks version 0")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _ask(self, api_key: int, body: bytes, decode: Callable[[bytes], T]) -> T:
        """Send one request and decode its response; a malformed one raises as one line."""
        response = self._call(api_key, body)
        try:
            return decode(response)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._error(f"{API_NAMES[api_key]}: malformed response ({exc})") from None

    def _call(self, api_key: int, body: bytes) -> bytes:
        """Send one request and return its response body (after the correlation id)."""
        if self._sock is None:
            raise self._error("not connected")
        self._correlation_id += 1
        try:
            self._sock.sendall(encode_request(api_key, self._correlation_id, self.client_id, body))
            (size,) = struct.unpack(">i", self._receive(4))
            if not 4 <= size <= 1 << 24:
                raise self._error(f"{API_NAMES[api_key]}: not a Kafka response (size {size})")
            response = self._receive(size)
        except OSError as exc:
            raise self._error(f"{API_NAMES[api_key]}: {reason(exc)}") from None
        (answered,) = struct.unpack(">i", response[:4])
        if answered != self._correlation_id:
            raise self._error(f"{API_NAMES[api_key]}: response to another request "
                              f"(correlation id {answered}, not {self._correlation_id})")
        return response[4:]

    def _receive(self, size: int) -> bytes:
        assert self._sock is not None
        data = b""
        while len(data) < size:
            chunk = self._sock.recv(size - len(data))
            if not chunk:
                raise OSError(0, "the broker closed the connection")
            data += chunk
        return data

    def describe(self, client_id: str) -> dict[str, float]:
        """The broker's quotas of exactly this client id: ``{key: value}``, empty if none."""
        self._require(DESCRIBE_CLIENT_QUOTAS)
        error, message, values = self._ask(DESCRIBE_CLIENT_QUOTAS, encode_describe(client_id),
                                           lambda body: decode_describe(body, client_id))
        if error:
            raise self._error(f"DescribeClientQuotas failed: {_error_name(error, message)}")
        return values

    def alter(self, client_id: str, values: Mapping[str, float], remove: Iterable[str] = ()) -> None:
        """Set ``values`` and remove the quotas named in ``remove``, for this client id."""
        self._require(ALTER_CLIENT_QUOTAS)
        entries = self._ask(ALTER_CLIENT_QUOTAS, encode_alter(client_id, values, remove), decode_alter)
        for error, message in entries:
            if error:
                raise self._error(f"AlterClientQuotas failed: {_error_name(error, message)}")

    def set(self, client_id: str, values: Mapping[str, float], remove: Iterable[str] = (),
            settle: float = SETTLE_SECONDS) -> dict[str, float]:
        """:meth:`alter`, then :meth:`describe` until the answer shows the change (for at
        most ``settle`` seconds: see :data:`SETTLE_SECONDS`); return the last answer."""
        remove = list(remove)
        self.alter(client_id, values, remove)
        deadline = time.monotonic() + settle
        while True:
            quotas = self.describe(client_id)
            done = all(quotas.get(k) == v for k, v in values.items()) and not any(k in quotas for k in remove)
            if done or time.monotonic() >= deadline:
                return quotas
            time.sleep(0.1)


def _error_name(code: int, message: str | None = None) -> str:
    """A broker error code as ``NAME (code)``, with the broker's message when it sent one
    (librdkafka's error names are Kafka's, for broker codes)."""
    text = f"{KafkaError(code).name()} ({code})"
    return f"{text}: {message}" if message else text

