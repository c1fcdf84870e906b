"""Servers that tests run as child processes on loopback ports: what they share.

:class:`ChildServer` is the life of one such process, whatever it serves: it picks a free
port, launches the process with its output appended to a log file, waits until the
process serves (its log says it bound the port and it answers its protocol), and stops it
politely (SIGTERM, then SIGKILL) or kills it outright, as a crash or an outage would. A
server keeps its port across restarts, so that its clients reconnect to it.

:class:`zookeeper.ZooKeeperServer`, :class:`kafka.KafkaBroker` and :class:`kafka.MotoS3`
say how to launch theirs, how to tell that it bound its port, and how to probe it.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

__all__ = ["ChildServer", "ServerStartError", "free_port"]

_ADDRESS_IN_USE = ("Address in use", "Address already in use", "AddrInUse")
"""What a server's log says when its port is taken: Rust's, Java's and Python's words."""

PORT_FREE_POLL = 0.1
"""Seconds between two checks that a restarting server's own port is free again."""


class ServerStartError(RuntimeError):
    """The server exited or did not answer before its start deadline."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (bind port 0, then close).

    Another process may take it before the server binds it; :meth:`ChildServer.start`
    detects that and retries with another port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


_live: weakref.WeakSet[ChildServer] = weakref.WeakSet()


@atexit.register
def _kill_live_servers() -> None:
    """Leave no server behind if a test run ends without stopping it."""
    for server in list(_live):
        server.kill()


class ChildServer(ABC):
    """A server run as a child process on a loopback port, logging to a file."""

    host = "127.0.0.1"
    name = "server"
    """What error messages call it."""
    start_error: type[ServerStartError] = ServerStartError
    """What :meth:`start` raises when the server does not start."""
    probe_every = 0.01
    """Seconds between two looks at a starting server (its log, then a probe)."""

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
        """How long the last successful :meth:`start` took, for diagnostics."""

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

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Start the server and wait until it serves; return ``self``.

        If the port chosen turns out to be taken, another one is picked (unless the port
        was given or the server ran before: clients know that one, so the server waits for
        it to be free).  Raises :attr:`start_error`, with the end of the server's log, if
        the server exits or does not answer within ``start_timeout`` seconds.
        """
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
            elif not self._wait_for_free_port(deadline):
                self._fail("port taken")
            self._launch()
            outcome = self._wait_until_serving(deadline)
            if outcome == "serving":
                self._port_fixed = True  # clients now know this port: keep it for restarts
                self.startup_seconds = time.monotonic() - began
                return self
            self.kill()
            if outcome == "port taken" and time.monotonic() < deadline:
                if self._port_fixed:
                    continue  # wait until our port is free again, then retry
                if attempts < 10:
                    self._port = None  # another process got the port first: pick another one
                    continue
            self._fail(outcome)

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

    def restart(self) -> Self:
        """Stop the server if it runs, then start it again on the same port."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server for good (what leaving a ``with`` block does)."""
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- what a server says

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
        """Raise :class:`OSError` unless this very server answers its protocol."""

    # ----------------------------------------------------------------- internals

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

    def _wait_for_free_port(self, deadline: float) -> bool:
        """Wait until our (fixed) port can be bound, as a server binds it (SO_REUSEADDR):
        a restarted server would otherwise launch only to find it taken."""
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self.host, self.port))
                    return True
                except OSError:
                    if time.monotonic() >= deadline:
                        return False
            time.sleep(PORT_FREE_POLL)

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
            time.sleep(self.probe_every)

    def _fail(self, outcome: str) -> NoReturn:
        self.kill()
        reason = {
            "port taken": f"port {self._port} is in use by another process",
            "exited": f"the process exited with status {self._last_returncode}",
        }.get(outcome, f"it did not answer within {self.start_timeout:g} s")
        raise self.start_error(
            f"the {self.name} did not start on {self.host}:{self._port}: {reason}.\n"
            f"Command: {' '.join(self._command())}\n"
            f"Last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def _forget_process(self) -> None:
        if self._process is not None:
            self._last_returncode = self._process.returncode
        self._process = None
        _live.discard(self)
