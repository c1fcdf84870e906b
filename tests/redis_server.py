"""A real Redis server for tests.

:class:`RedisServer` runs Debian's ``redis-server`` as a child process bound to a free
loopback port, with an append-only file fsynced at every write, so that what a client
was told is written survives a restart, even after :meth:`~servers.ChildServer.kill`.
It keeps its port and its data directory across restarts.

Redis comes from Debian's ``redis-server`` package (``apt-get install -y redis-server``);
``STREAMFLOW_REDIS_SERVER`` names another executable.

Example::

    with RedisServer(tmp_path) as server:
        provider = RedisProvider(server.url, unique_topology("test"))
        ...
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Self

import redis
from servers import ChildServer, ServerStartError

__all__ = ["INSTALL_HINT", "RedisNotInstalledError", "RedisServer", "RedisStartError", "unique_topology"]

INSTALL_HINT = "run `apt-get install -y redis-server` (as root; CI's .ci/run does it)"

SERVER_ENV = "STREAMFLOW_REDIS_SERVER"


class RedisNotInstalledError(RuntimeError):
    """``redis-server`` is missing on this machine."""


class RedisStartError(ServerStartError):
    """The server process exited or did not answer before the start deadline."""


def find_redis_server() -> str:
    """``$STREAMFLOW_REDIS_SERVER`` if set, else ``redis-server`` on PATH."""
    found = os.environ.get(SERVER_ENV) or shutil.which("redis-server")
    if not found:
        raise RedisNotInstalledError(f"redis-server is not installed: {INSTALL_HINT}")
    return found


def unique_topology(name: str = "test") -> str:
    """A topology name no other test uses, such as ``test-1a2b3c4d5e6f``: the state
    provider namespaces its keys by it, so tests sharing a server do not see each other's."""
    return f"{name}-{uuid.uuid4().hex[:12]}"


class RedisServer(ChildServer):
    """A Redis server on ``127.0.0.1`` for tests.

    :param directory: holds the data directory ``data/`` (the append-only file) and the
        server's log ``redis.log``; created if missing. Reusing it keeps the data.
    :param appendfsync: Redis's ``appendfsync``: ``always`` (the default) fsyncs before each
        reply, so a killed server loses nothing it acknowledged.
    :param port: by default a free one is picked at the first start and kept across
        restarts, so that clients can reconnect.
    """

    name = "Redis server"
    start_error = RedisStartError

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        appendfsync: str = "always",
        port: int | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(directory, "redis.log", port=port, start_timeout=start_timeout,
                         stop_timeout=stop_timeout)
        self.data_dir: Path = self.directory / "data"
        self.appendfsync = appendfsync
        self._executable = "redis-server"

    @property
    def url(self) -> str:
        """The URL for clients, ``"redis://127.0.0.1:PORT/0"``."""
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        """A new redis-py client of database 0 (close it when done)."""
        return redis.Redis(host=self.host, port=self.port, db=0, socket_timeout=5, socket_connect_timeout=5)

    def start(self) -> Self:
        """Start the server and wait until it serves; return ``self``. Raises
        :class:`RedisStartError` as :meth:`ChildServer.start` says."""
        self._executable = find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return super().start()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running else "stopped"
        return f"<RedisServer {self.host}:{self._port} {state} in {self.directory}>"

    # ----------------------------------------------------------------- internals

    def _command(self) -> list[str]:
        return [
            self._executable,
            "--port", str(self._port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",  # no RDB snapshots: the append-only file is the data
            "--daemonize", "no",
            "--logfile", "",  # stdout, which start() sends to redis.log
        ]

    def _bound(self, log: str) -> bool:
        return "Ready to accept connections" in log

    def _probe(self) -> None:
        """PING, then tell our server apart from another holding the port by its ``dir``."""
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            client.ping()
            found = client.config_get("dir").get("dir")
        except redis.RedisError as error:
            raise ConnectionError(f"not serving yet: {error}") from None
        finally:
            client.close()
        if found is None or os.path.realpath(found) != os.path.realpath(self.data_dir):
            raise ConnectionError(f"another Redis answers on this port (dir {found})")
