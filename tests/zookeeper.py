"""A real, standalone ZooKeeper server for tests.

:class:`ZooKeeperServer` runs Apache ZooKeeper's own server
(``org.apache.zookeeper.server.quorum.QuorumPeerMain``) as a child JVM bound to a free
loopback port, with a short ``tickTime`` so that tests can use session timeouts of a few
seconds.  It can be stopped politely, killed outright (to simulate an outage) and restarted
on the same port with the same data directory, so znodes and sessions survive a restart the
way they do in production.

ZooKeeper comes from Debian's ``zookeeper`` package (``apt-get install -y zookeeper``), whose
jars live in ``/usr/share/java``.  Another installation can be used by setting
``STREAMFLOW_ZOOKEEPER_CLASSPATH`` to a full Java classpath (``:``-separated) and, if
``java`` is not on ``PATH``, ``JAVA_HOME``.

Example::

    with ZooKeeperServer(tmp_path) as server:
        client = KazooClient(hosts=server.hosts)
        ...
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from servers import ChildServer, ServerStartError

__all__ = [
    "DEFAULT_JVM_ARGS",
    "INSTALL_HINT",
    "JAVA_DIR",
    "ZooKeeperNotInstalledError",
    "ZooKeeperServer",
    "ZooKeeperStartError",
    "find_classpath",
    "find_java",
    "four_letter_word",
]

JAVA_DIR = Path("/usr/share/java")
"""Where Debian installs the ZooKeeper jars and the jars they depend on."""

MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"

INSTALL_HINT = "run `apt-get install -y zookeeper` (as root; CI's .ci/run does it)"

CLASSPATH_ENV = "STREAMFLOW_ZOOKEEPER_CLASSPATH"

# NettyServerCnxnFactory needs netty-codec, which zookeeper.jar's manifest does not name (the
# other two are dependencies of the netty jars it does name).  See _connection_factory().
_NETTY_SERVER_JARS = ("netty-codec.jar", "netty-resolver.jar", "netty-transport-native-unix-common.jar")
NETTY_FACTORY = "org.apache.zookeeper.server.NettyServerCnxnFactory"

# SLF4J bindings, best first.  Without one, SLF4J 1.7 silently drops every log line, and a
# server that fails to start leaves nothing to explain why.  slf4j-simple writes to stderr,
# which start() sends to the server's log file.
_SLF4J_BINDINGS = ("slf4j-simple.jar", "slf4j-nop.jar")

DEFAULT_JVM_ARGS: tuple[str, ...] = (
    "-Xms32m",
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",  # C1 only: the JVM starts faster; a test server needs no C2
    "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
)
"""JVM options for a small, quick-starting test server."""


class ZooKeeperNotInstalledError(RuntimeError):
    """Java or the ZooKeeper jars are missing on this machine."""


class ZooKeeperStartError(ServerStartError):
    """The server process exited or did not answer before the start deadline."""


# --------------------------------------------------------------------------- discovery


def find_java() -> str:
    """Return the ``java`` executable: ``$JAVA_HOME/bin/java`` if set, else ``java`` on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home, "bin", "java")
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise ZooKeeperNotInstalledError(
            f"no `java` executable on PATH (nor in $JAVA_HOME/bin): {INSTALL_HINT}, which pulls in a JRE"
        )
    return found


def _manifest_class_path(jar: Path) -> list[str]:
    """The ``Class-Path`` entries of a jar's manifest (Debian lists a jar's dependencies there)."""
    try:
        with zipfile.ZipFile(jar) as archive:
            manifest = archive.read("META-INF/MANIFEST.MF").decode("utf-8", "replace")
    except (OSError, KeyError, zipfile.BadZipFile):
        return []
    # Manifest lines are wrapped at 72 bytes; a continuation line starts with one space.
    unwrapped = manifest.replace("\r\n", "\n").replace("\n ", "")
    for line in unwrapped.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "class-path":
            return value.split()
    return []


def find_classpath(java_dir: Path = JAVA_DIR) -> list[str]:
    """Return the Java classpath that runs a ZooKeeper server, as a list of jar paths.

    It is ``zookeeper.jar``, the jars its manifest names that exist (Debian's
    ``libzookeeper-java`` points at its dependencies there: ``zookeeper-jute``,
    ``slf4j-api``, ``netty-*``, ``metrics-core``, ``snappy-java``, ...; ``jline``, which
    only the CLI needs, is named but not installed), ``netty-codec`` and friends for the
    Netty connection factory, and one SLF4J binding so that the server logs.
    ``$STREAMFLOW_ZOOKEEPER_CLASSPATH``, if set, is used as is instead.
    """
    override = os.environ.get(CLASSPATH_ENV)
    if override:
        return [entry for entry in override.split(os.pathsep) if entry]

    zookeeper_jar = java_dir / "zookeeper.jar"
    if not zookeeper_jar.is_file():
        raise ZooKeeperNotInstalledError(
            f"ZooKeeper is not installed ({zookeeper_jar} is missing): {INSTALL_HINT}, "
            f"or set {CLASSPATH_ENV} to the classpath of another installation"
        )
    classpath = [str(zookeeper_jar)]
    for entry in _manifest_class_path(zookeeper_jar):
        path = Path(entry) if os.path.isabs(entry) else java_dir / entry
        if path.is_file() and str(path) not in classpath:
            classpath.append(str(path))
    # Older packagings may carry no manifest Class-Path: make sure of the two jars
    # without which the server cannot even parse its configuration.
    for required in ("zookeeper-jute.jar", "slf4j-api.jar"):
        path = java_dir / required
        if str(path) not in classpath:
            if not path.is_file():
                raise ZooKeeperNotInstalledError(f"ZooKeeper's dependency {path} is missing: {INSTALL_HINT}")
            classpath.append(str(path))
    for name in _NETTY_SERVER_JARS:
        path = java_dir / name
        if path.is_file() and str(path) not in classpath:
            classpath.append(str(path))
    for binding in _SLF4J_BINDINGS:
        path = java_dir / binding
        if path.is_file():
            classpath.append(str(path))
            break
    return classpath


def four_letter_word(host: str, port: int, command: str, timeout: float = 1.0) -> str:
    """Send a ZooKeeper four-letter command (``ruok``, ``conf``, ``srvr``, ``mntr``...) and
    return the reply.  Raises :class:`OSError` if the server is not reachable."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(command.encode("ascii"))
        chunks: list[bytes] = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _connection_factory(classpath: Sequence[str]) -> str | None:
    """The ``serverCnxnFactory`` to configure: Netty's where its jars are on the classpath.

    ZooKeeper 3.8.0's default NIO factory binds its port before it loads its data, and a
    client that connects in that window (as a reconnecting client does during a restart)
    hits a NullPointerException in the server that leaves its socket open but unanswered:
    the client waits a whole session timeout for a reply, and its session often expires
    meanwhile.  On this machine that was 15 slow reconnects and 7 expired sessions in 100
    kill/restart cycles.  The Netty factory closes such early connections cleanly (0 in
    250 cycles); restarts take about 0.1 s longer.
    """
    netty_codec = re.compile(r"netty-codec(-[0-9].*)?\.jar")
    return NETTY_FACTORY if any(netty_codec.fullmatch(Path(entry).name) for entry in classpath) else None


# --------------------------------------------------------------------------- the server

class ZooKeeperServer(ChildServer):
    """A standalone ZooKeeper server on ``127.0.0.1`` for tests.

    :param directory: holds ``zoo.cfg``, the data directory ``data/`` and the server's log
        ``zookeeper.log``; created if missing.  Reusing it keeps the znodes.
    :param tick_time_ms: ZooKeeper's ``tickTime``; short, so that expiries are detected fast.
    :param min_session_timeout_ms, max_session_timeout_ms: the range the server grants;
        the default minimum lets clients ask for 1-4 s sessions.
    :param start_timeout: seconds :meth:`start` waits for the server to answer.
    :param stop_timeout: seconds :meth:`stop` waits after SIGTERM before it sends SIGKILL.
    :param port: the client port; by default a free one is picked at the first start and
        kept across restarts, so that clients can reconnect.
    :param jvm_args: options for the JVM, :data:`DEFAULT_JVM_ARGS` by default.
    :param extra_config: more ``zoo.cfg`` settings, which override the defaults.
    """

    name = "ZooKeeper server"
    start_error = ZooKeeperStartError
    probe_every = 0.05
    """Each probe is two connections (``srvr``, ``conf``), each logged by the server."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        tick_time_ms: int = 500,
        min_session_timeout_ms: int = 1000,
        max_session_timeout_ms: int = 60000,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        port: int | None = None,
        jvm_args: Sequence[str] = DEFAULT_JVM_ARGS,
        extra_config: dict[str, str] | None = None,
    ) -> None:
        super().__init__(directory, "zookeeper.log", port=port, start_timeout=start_timeout,
                         stop_timeout=stop_timeout)
        self.data_dir = self.directory / "data"
        self.config_path = self.directory / "zoo.cfg"
        self.tick_time_ms = tick_time_ms
        self.min_session_timeout_ms = min_session_timeout_ms
        self.max_session_timeout_ms = max_session_timeout_ms
        self.jvm_args = tuple(jvm_args)
        self.extra_config = dict(extra_config or {})
        self._java = "java"
        self._classpath = ""
        self._connection_factory: str | None = None

    @property
    def hosts(self) -> str:
        """The connection string for clients, ``"127.0.0.1:PORT"``."""
        return f"{self.host}:{self.port}"

    def start(self) -> Self:
        """Start the server and wait until it serves; return ``self``.  Raises
        :class:`ZooKeeperStartError` as :meth:`ChildServer.start` says."""
        self._java = find_java()
        jars = find_classpath()
        self._classpath = os.pathsep.join(jars)
        self._connection_factory = _connection_factory(jars)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return super().start()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running else "stopped"
        return f"<ZooKeeperServer {self.host}:{self._port} {state} in {self.directory}>"

    def command(self, word: str, timeout: float = 1.0) -> str:
        """Send a four-letter command (``ruok``, ``srvr``, ``mntr``, ``cons``...) to the server."""
        return four_letter_word(self.host, self.port, word, timeout)

    # ----------------------------------------------------------------- internals

    def _launch(self) -> None:
        self._write_config()  # the port may have changed since the last attempt
        super()._launch()

    def _write_config(self) -> None:
        settings = {
            "tickTime": str(self.tick_time_ms),
            "dataDir": str(self.data_dir),
            "clientPort": str(self._port),
            "clientPortAddress": self.host,
            "minSessionTimeout": str(self.min_session_timeout_ms),
            "maxSessionTimeout": str(self.max_session_timeout_ms),
            "maxClientCnxns": "0",  # no per-address limit: every test client is 127.0.0.1
            "admin.enableServer": "false",  # else Jetty wants port 8080
            "4lw.commands.whitelist": "*",
            "forceSync": "no",  # no fsync per write: tests need speed, not durability
            "preAllocSize": "1024",  # KiB of transaction log preallocated, not 64 MiB
            "autopurge.purgeInterval": "0",
        }
        if self._connection_factory:
            settings["serverCnxnFactory"] = self._connection_factory
        settings.update(self.extra_config)
        text = "".join(f"{key}={value}\n" for key, value in settings.items())
        self.config_path.write_text(text, encoding="utf-8")

    def _command(self) -> list[str]:
        return [self._java, *self.jvm_args, "-cp", self._classpath, MAIN_CLASS, str(self.config_path)]

    def _bound(self, log: str) -> bool:
        return True  # no log line needed: the probe tells our server apart by its data directory

    def _probe(self) -> None:
        """``ruok`` is not enough: the server answers ``imok`` while it still loads its
        data, and so would another ZooKeeper holding the port (ours then dies of a
        BindException).  ``srvr`` reports a ``Mode`` only once the server serves, and
        ``conf`` tells our server apart by its data directory."""
        if "Mode: " not in self.command("srvr", timeout=0.5):
            raise ConnectionError("not serving yet")
        our_data_dir = f"dataDir={self.data_dir}"
        conf = self.command("conf", timeout=0.5).splitlines()
        if not any(line == our_data_dir or line.startswith(our_data_dir + os.sep) for line in conf):
            raise ConnectionError("another ZooKeeper answers on this port")
