"""``streamflow kafka-quota``: a broker's own client-id quotas (connectors/kafka/admin.py).

Tansu, the test broker, has no client-quota APIs, so against it only the refusal is
tested; the wire format is checked against a fake broker on a loopback socket, with the
expected bytes written out here field by field from the Kafka protocol, not from the code.
"""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from commands import assert_one_line_error, streamflow
from kafka import KafkaBroker, api_versions
from servers import free_port
from streamflow_connectors.kafka.admin import QuotaAdmin
from streamflow_connectors.kafka.client import KafkaClientError

# -- Kafka's primitive types, written out independently of admin.py ----------------------


def string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    return struct.pack(">h", len(text)) + text.encode()


def int32(n: int) -> bytes:
    return struct.pack(">i", n)


def int16(n: int) -> bytes:
    return struct.pack(">h", n)


def float64(x: float) -> bytes:
    return struct.pack(">d", x)


def boolean(b: bool) -> bytes:
    return b"\x01" if b else b"\x00"


def client_id_entity(name: str | None) -> bytes:
    return int32(1) + string("client-id") + string(name)


class FakeBroker:
    """Serves one connection: answers each request with ``answers[api_key]`` (the response
    body after the correlation id, which it echoes), or closes the connection for a key it
    has no answer for. Every request frame it received, size prefix included, is kept."""

    def __init__(self, answers: dict[int, bytes]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(30)  # a test that never connects does not leave the thread waiting
        self.bootstrap = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.server.accept()
        with connection:
            while True:
                head = self._receive(connection, 4)
                if head is None:
                    return
                frame = head + (self._receive(connection, struct.unpack(">i", head)[0]) or b"")
                self.requests.append(frame)
                api_key, _version, correlation_id = struct.unpack_from(">hhi", frame, 4)
                if api_key not in self.answers:
                    return
                body = int32(correlation_id) + self.answers[api_key]
                connection.sendall(int32(len(body)) + body)

    @staticmethod
    def _receive(connection: socket.socket, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            chunk = connection.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def of(self, api_key: int) -> list[bytes]:
        """The requests received with this API key."""
        return [frame for frame in self.requests if struct.unpack_from(">h", frame, 4)[0] == api_key]

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)


def api_versions_answer(*keys: tuple[int, int, int]) -> bytes:
    """ApiVersions v0 response body: error_code, [api_key, min_version, max_version]."""
    return int16(0) + int32(len(keys)) + b"".join(struct.pack(">hhh", *key) for key in keys)


QUOTA_APIS = api_versions_answer((18, 0, 3), (48, 0, 1), (49, 0, 1))

ALTER_OK = int32(0) + int32(1) + int16(0) + string(None) + client_id_entity("wc-sentences")

DESCRIBE_ANSWER = (
    int32(0) + int16(0) + string(None)  # throttle_time_ms, error_code, error_message
    + int32(2)
    # the default client id's quota (entity name null): not this client id's
    + client_id_entity(None) + int32(1) + string("consumer_byte_rate") + float64(1.0)
    + client_id_entity("wc-sentences") + int32(2)
    + string("producer_byte_rate") + float64(1000.0)
    + string("consumer_byte_rate") + float64(1048576.0)
)


def request(api_key: int, correlation_id: int, body: bytes) -> bytes:
    """A request frame: size, then header v1 (api_key, api_version 0, correlation_id,
    client_id), then the body."""
    message = int16(api_key) + int16(0) + int32(correlation_id) + string("streamflow-admin") + body
    return int32(len(message)) + message


def correlation_id(frame: bytes) -> int:
    return int(struct.unpack_from(">i", frame, 8)[0])


# -- the real broker ----------------------------------------------------------------------


def test_tansu_refuses_with_one_line(kafka: KafkaBroker) -> None:
    versions = api_versions(kafka.host, kafka.port)
    assert 48 not in versions and 49 not in versions, (
        "Tansu now lists the client-quota APIs: test the success path against it instead")
    assert_one_line_error(
        streamflow("kafka-quota", "--bootstrap", kafka.bootstrap, "--client-id", "wc-sentences",
                   "--consumer-byte-rate", "1048576"),
        f"Kafka at {kafka.bootstrap}: the broker does not support AlterClientQuotas (API key 49)")
    assert_one_line_error(
        streamflow("kafka-quota", "--bootstrap", kafka.bootstrap, "--client-id", "wc-sentences"),
        f"Kafka at {kafka.bootstrap}: the broker does not support DescribeClientQuotas (API key 48)")


def test_unreachable_broker_is_one_line() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    assert_one_line_error(streamflow("kafka-quota", "--bootstrap", bootstrap, "--client-id", "x"),
                          f"Kafka at {bootstrap}: cannot connect", "Connection refused")


# -- the wire format, against a fake broker -----------------------------------------------


def test_set_sends_these_bytes_and_prints_the_described_quotas() -> None:
    broker = FakeBroker({18: QUOTA_APIS, 49: ALTER_OK, 48: DESCRIBE_ANSWER})
    try:
        result = streamflow("kafka-quota", "--bootstrap", broker.bootstrap, "--client-id", "wc-sentences",
                            "--producer-byte-rate", "1000", "--consumer-byte-rate", "1048576",
                            "--remove", "request_percentage")
    finally:
        broker.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["consumer_byte_rate=1048576", "producer_byte_rate=1000"]

    (probe,) = broker.of(18)
    assert probe == request(18, correlation_id(probe), b"")
    (alter,) = broker.of(49)
    assert alter == request(49, correlation_id(alter), (
        int32(1)  # entries
        + client_id_entity("wc-sentences")
        + int32(3)  # ops: key, value, remove
        + string("producer_byte_rate") + float64(1000.0) + boolean(False)
        + string("consumer_byte_rate") + float64(1048576.0) + boolean(False)
        + string("request_percentage") + float64(0.0) + boolean(True)
        + boolean(False)  # validate_only
    ))
    describe = broker.of(48)[0]
    assert describe == request(48, correlation_id(describe), (
        int32(1)  # components: entity_type, match_type (0: exact), match
        + string("client-id") + struct.pack(">b", 0) + string("wc-sentences")
        + boolean(True)  # strict
    ))
    assert len({correlation_id(frame) for frame in broker.requests}) == len(broker.requests)


def test_describe_decodes_this_client_ids_quotas() -> None:
    broker = FakeBroker({18: QUOTA_APIS, 48: DESCRIBE_ANSWER})
    try:
        with QuotaAdmin(broker.bootstrap) as admin:
            quotas = admin.describe("wc-sentences")
    finally:
        broker.close()
    assert quotas == {"producer_byte_rate": 1000.0, "consumer_byte_rate": 1048576.0}
    assert not broker.of(49)


def test_no_quotas_is_said_so() -> None:
    empty = int32(0) + int16(0) + string(None) + int32(0)
    broker = FakeBroker({18: QUOTA_APIS, 48: empty})
    try:
        result = streamflow("kafka-quota", "--bootstrap", broker.bootstrap, "--client-id", "wc-sentences")
    finally:
        broker.close()
    assert result.returncode == 0 and result.stdout == "client id wc-sentences: no broker quotas\n"


def test_error_codes_are_one_line() -> None:
    invalid = int32(0) + int32(1) + int16(42) + string("duplicate quota key") + client_id_entity("c")
    broker = FakeBroker({18: QUOTA_APIS, 49: invalid})
    try:
        assert_one_line_error(
            streamflow("kafka-quota", "--bootstrap", broker.bootstrap, "--client-id", "c",
                       "--request-percentage", "50"),
            f"Kafka at {broker.bootstrap}: AlterClientQuotas failed: INVALID_REQUEST (42): duplicate quota key")
    finally:
        broker.close()

    denied = int32(0) + int16(31) + string(None) + int32(-1)  # entries: null
    broker = FakeBroker({18: QUOTA_APIS, 48: denied})
    try:
        with QuotaAdmin(broker.bootstrap) as admin, pytest.raises(KafkaClientError) as error:
            admin.describe("c")
    finally:
        broker.close()
    assert str(error.value) == (
        f"Kafka at {broker.bootstrap}: DescribeClientQuotas failed: CLUSTER_AUTHORIZATION_FAILED (31)")


def test_closed_connection_and_old_versions_are_one_line() -> None:
    broker = FakeBroker({18: QUOTA_APIS})  # closes the connection on the describe
    try:
        assert_one_line_error(
            streamflow("kafka-quota", "--bootstrap", broker.bootstrap, "--client-id", "c"),
            "DescribeClientQuotas: the broker closed the connection")
    finally:
        broker.close()

    broker = FakeBroker({18: api_versions_answer((18, 0, 3), (48, 1, 1), (49, 1, 1))})
    try:
        with QuotaAdmin(broker.bootstrap) as admin, pytest.raises(KafkaClientError) as error:
            admin.alter("c", {"producer_byte_rate": 1.0})
    finally:
        broker.close()
    assert "AlterClientQuotas (API key 49) versions 1 to 1 only; this command speaks version 0" in str(error.value)
    assert not broker.of(49)
