"""A whole cluster on one machine in one command: ``streamflow dev-cluster``.

Like Storm's ``storm dev-zookeeper``, but for everything a topology needs to run as it
would in production: a standalone ZooKeeper, a nimbus and ``--supervisors`` supervisors
with ``--slots`` worker ports each, all on 127.0.0.1, each with its own directory and log
file under ``--data-dir``. It prints the ``STREAMFLOW_NIMBUS`` to export, then waits;
Ctrl-C (or SIGTERM) stops the supervisors (and so their workers), then nimbus, then
ZooKeeper. If any of them exits on its own, the others are stopped too and the exit is
reported with the end of its log.

The children run in their own sessions, so the terminal's Ctrl-C reaches this process
only, and the shutdown order holds: a supervisor still needs ZooKeeper to deregister.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from streamflow.errors import StreamflowError

ZOOKEEPER_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
DEBIAN_JARS = Path("/usr/share/java")
INSTALL_HINT = ("install ZooKeeper (Debian/Ubuntu: apt-get install -y zookeeper), or point "
                "ZOOKEEPER_HOME at an Apache ZooKeeper release, or pass --zk-jar")
START_TIMEOUT_SECS = 60.0
STOP_GRACE_SECS = 15.0
LOG_TAIL_LINES = 5


@dataclass(frozen=True)
class DevClusterOptions:
    """What ``streamflow dev-cluster`` starts, and where."""

    data_dir: Path
    supervisors: int = 1
    slots: int = 4
    port: int = 8080
    zk_port: int = 2181
    base_port: int = 6700
    health_port: int = 8081
    zk_jar: str | None = None


def zookeeper_classpath(zk_jar: str | None, environ: dict[str, str] | os._Environ[str]) -> str:
    """The Java classpath of a ZooKeeper server: ``zk_jar`` and the jars beside it, else
    ``$ZOOKEEPER_HOME`` (an Apache release: its jar and ``lib/``), else Debian's package.
    Raises :class:`StreamflowError` saying how to install one when none is found."""
    if zk_jar:
        jar = Path(zk_jar).expanduser().resolve()
        if not jar.is_file():
            raise StreamflowError(f"--zk-jar {zk_jar}: no such file")
        return f"{jar}:{jar.parent}/*"
    home = environ.get("ZOOKEEPER_HOME")
    if home:
        root = Path(home).expanduser().resolve()
        if not any(root.glob("lib/*.jar")):
            raise StreamflowError(f"ZOOKEEPER_HOME={home}: no lib/*.jar there (an Apache ZooKeeper "
                                  "release has one)")
        return f"{root}/*:{root}/lib/*"
    jar = DEBIAN_JARS / "zookeeper.jar"
    if jar.is_file():
        logging_jar = DEBIAN_JARS / "slf4j-simple.jar"
        return f"{jar}:{logging_jar}" if logging_jar.is_file() else str(jar)
    raise StreamflowError(f"no ZooKeeper found: {INSTALL_HINT}")


def zookeeper_command(zk_jar: str | None) -> list[str]:
    """How to run a ZooKeeper server here (its config file to append), or a
    :class:`StreamflowError` saying what to install."""
    java = shutil.which("java")
    if java is None:
        raise StreamflowError(f"no java on PATH: {INSTALL_HINT}")
    return [java, "-Xmx256m", "-cp", zookeeper_classpath(zk_jar, os.environ), ZOOKEEPER_MAIN]


def check_ports(options: DevClusterOptions) -> None:
    """Refuse, naming the option to change, a port another process already holds."""
    wanted = [("--zk-port", options.zk_port), ("--port", options.port)]
    for n in range(options.supervisors):
        wanted += [("--base-port", options.base_port + n * options.slots + slot) for slot in range(options.slots)]
        wanted.append(("--health-port", options.health_port + n))
    seen: set[int] = set()
    for option, port in wanted:
        if port in seen:
            raise StreamflowError(f"port {port} is given twice: change {option} "
                                  "(supervisor N uses --base-port + N*--slots and --health-port + N)")
        seen.add(port)
        if not _free(port):
            raise StreamflowError(f"port {port} is taken by another process: change {option}")


def _free(port: int) -> bool:
    """Whether a server could listen on ``port``: connections of a run just stopped, in
    TIME_WAIT, do not count (servers bind with SO_REUSEADDR), a listener does."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Child:
    """One process of the dev cluster: its command, its log file, and how to stop it."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def exited(self) -> int | None:
        return self.process.poll()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_GRACE_SECS`."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_GRACE_SECS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def tail(self) -> str:
        """The last lines of its log, joined on one line, for an error message."""
        lines = self.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        return " | ".join(line.strip() for line in lines) or "(its log is empty)"


class DevCluster:
    """Starts the children in order, each once the one before answers, and stops them in
    the reverse order."""

    def __init__(self, options: DevClusterOptions, zookeeper: list[str]) -> None:
        self.options = options
        self.zookeeper = zookeeper
        """The command line of a ZooKeeper server, without its config file."""
        self.children: list[Child] = []
        self.nimbus_url = f"http://127.0.0.1:{options.port}"

    def start(self) -> None:
        options = self.options
        options.data_dir.mkdir(parents=True, exist_ok=True)
        self._start_zookeeper()
        zk = ["--zk", f"127.0.0.1:{options.zk_port}"]
        streamflow = [sys.executable, "-m", "streamflow.cli"]
        self._start("nimbus", [*streamflow, "nimbus", *zk, "--host", "127.0.0.1", "--port", str(options.port)],
                    lambda: _ready(f"{self.nimbus_url}/readyz"))
        for n in range(options.supervisors):
            health = options.health_port + n
            self._start(f"supervisor-{n}", [
                *streamflow, "supervisor", *zk, "--host", "127.0.0.1", "--slots", str(options.slots),
                "--base-port", str(options.base_port + n * options.slots), "--health-port", str(health),
                "--id", f"dev-{n}", "--data-dir", str(options.data_dir / f"supervisor-{n}"),
            ], functools.partial(_ready, f"http://127.0.0.1:{health}/readyz"))

    def _start_zookeeper(self) -> None:
        options = self.options
        data = options.data_dir / "zookeeper"
        data.mkdir(exist_ok=True)
        config = options.data_dir / "zoo.cfg"
        config.write_text(f"tickTime=2000\ndataDir={data}\nclientPort={options.zk_port}\n"
                          "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
                          "4lw.commands.whitelist=srvr,ruok\n"
                          "autopurge.snapRetainCount=3\nautopurge.purgeInterval=1\n")
        self._start("zookeeper", [*self.zookeeper, str(config)], lambda: _zookeeper_serving(options.zk_port))

    def _start(self, name: str, argv: list[str], ready: Callable[[], bool]) -> None:
        child = Child(name, argv, self.options.data_dir / f"{name}.log")
        self.children.append(child)
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while not ready():
            if child.exited() is not None:
                raise StreamflowError(f"{name} exited with code {child.exited()} while starting: {child.tail()}")
            if time.monotonic() > deadline:
                raise StreamflowError(f"{name} did not become ready within {START_TIMEOUT_SECS:.0f} s: "
                                      f"{child.tail()}")
            time.sleep(0.1)

    def exited(self) -> Child | None:
        """The first child that exited on its own, if any."""
        return next((child for child in self.children if child.exited() is not None), None)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


def _zookeeper_serving(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(b"srvr")
            return b"Mode:" in conn.recv(4096)
    except OSError:
        return False


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def run(options: DevClusterOptions) -> int:
    """Start the cluster, print what to export, and wait for Ctrl-C or a child's exit.
    Returns 0 after Ctrl-C, 1 when a child exited on its own."""
    zookeeper = zookeeper_command(options.zk_jar)
    check_ports(options)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    cluster = DevCluster(options, zookeeper)
    try:
        cluster.start()
        print(f"dev cluster up: ZooKeeper 127.0.0.1:{options.zk_port}, nimbus {cluster.nimbus_url}, "
              f"{options.supervisors} supervisor(s) x {options.slots} slots; logs in {options.data_dir}",
              file=sys.stderr, flush=True)
        print(f"export STREAMFLOW_NIMBUS={cluster.nimbus_url}", flush=True)
        print("Ctrl-C stops everything.", file=sys.stderr, flush=True)
        while not stopping.wait(0.5):
            gone = cluster.exited()
            if gone is not None:
                print(f"streamflow: error: {gone.name} exited with code {gone.exited()}: {gone.tail()}",
                      file=sys.stderr, flush=True)
                return 1
        return 0
    finally:
        cluster.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dev-cluster`` command's options."""
    parser.add_argument("--supervisors", type=int, default=1, help="supervisors to start (default 1)")
    parser.add_argument("--slots", type=int, default=4, help="worker slots per supervisor (default 4)")
    parser.add_argument("--port", type=int, default=8080, help="nimbus's API port (default 8080)")
    parser.add_argument("--zk-port", type=int, default=2181, help="ZooKeeper's client port (default 2181)")
    parser.add_argument("--base-port", type=int, default=6700,
                        help="first worker port; supervisor N uses BASE + N*SLOTS onwards (default 6700)")
    parser.add_argument("--health-port", type=int, default=8081,
                        help="supervisor N's health and logs port is this + N (default 8081)")
    parser.add_argument("--data-dir", default="streamflow-dev",
                        help="where ZooKeeper's data, code packages and every log go (default ./streamflow-dev)")
    parser.add_argument("--zk-jar", help="a zookeeper.jar to run (default: $ZOOKEEPER_HOME, then Debian's)")


def options_of(args: argparse.Namespace) -> DevClusterOptions:
    """The options parsed by :func:`add_arguments`, checked."""
    if args.supervisors < 1 or args.slots < 1:
        raise StreamflowError("--supervisors and --slots must be at least 1")
    return DevClusterOptions(Path(args.data_dir).resolve(), args.supervisors, args.slots, args.port,
                             args.zk_port, args.base_port, args.health_port, args.zk_jar)
