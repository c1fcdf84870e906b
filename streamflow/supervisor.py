"""The supervisor: one per node (or pod); runs the worker processes nimbus assigns here.

It advertises its slots (ports) in an ephemeral znode, and then, on every assignment
change and every half second, makes the worker processes on this node match the
assignments: starts a worker (its own OS process, ``streamflow worker ...``) for each slot
assigned here, restarts one that died (at once if it had run a while; with a growing
back-off if it keeps dying young, as when its topology's code cannot load), and stops
workers whose slot is no longer assigned here. On SIGTERM it stops its workers and
removes its znode at once, so nimbus reschedules without waiting for the session to expire.

Each worker's output (JSON log lines, :mod:`streamflow.logs`) goes to a file per
topology and slot, which the supervisor serves to nimbus at ``GET /logs`` on its health
port, behind the topology's secret.
"""

from __future__ import annotations

import hmac
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from kazoo.protocol.states import KazooState

from streamflow.logs import read_new_lines, rotate
from streamflow.metrics import SupervisorMetrics
from streamflow.package import unpack
from streamflow.zkstate import ClusterState, topology_name

log = logging.getLogger(__name__)

SYNC_SECS = 0.5
STOP_GRACE_SECS = 5.0
YOUNG_SECS = 10.0
"""A worker that dies younger than this is restarted only after a back-off."""
MAX_BACKOFF_SECS = 30.0


@dataclass
class WorkerSlot:
    """A worker process this supervisor started, and what it was started for."""

    topology: str
    tasks: tuple[int, ...]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    next_start: float = 0.0


class Supervisor:
    def __init__(
        self,
        state: ClusterState,
        supervisor_id: str,
        host: str,
        ports: list[int],
        data_dir: Path,
        zk_auth: str | None = None,
        logs_url: str | None = None,
    ) -> None:
        self.state = state
        self.id = supervisor_id
        self.host = host
        self.ports = ports
        self.data_dir = data_dir
        self.zk_auth = zk_auth
        self.logs_url = logs_url
        """Where nimbus reads this node's worker logs (the health port), if served."""
        self.slots: dict[int, WorkerSlot] = {}
        self.registered = False
        self.metrics = SupervisorMetrics()
        self._watched: set[str] = set()
        self._wake = threading.Event()
        self._stopping = threading.Event()

    def run(self) -> None:
        """Register, then keep workers in line with the assignments until SIGTERM/SIGINT."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        self.state.register_supervisor(self.id, {"host": self.host, "ports": self.ports,
                                                 "started": time.time(), "pid": os.getpid(),
                                                 "logs_url": self.logs_url})
        self.registered = True
        self.state.zk.ChildrenWatch(self.state.path("assignments"), self._assignments_changed)
        log.info("supervisor %s on %s offers ports %s", self.id, self.host, self.ports)
        while not self._stopping.is_set():
            try:
                self.sync()
            except Exception:
                log.exception("supervisor %s: sync failed; retrying", self.id)
            self._wake.wait(SYNC_SECS)
            self._wake.clear()
        self._shutdown()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def ready(self) -> tuple[bool, str]:
        """Ready when its slots are registered and ZooKeeper is connected."""
        if not self.registered or self._stopping.is_set():
            return False, "slots not registered"
        if self.state.zk.state != KazooState.CONNECTED:
            return False, f"ZooKeeper connection {self.state.zk.state}"
        return True, f"{len(self.ports)} slots registered"

    def logs(self, query: dict[str, str], auth: str | None) -> tuple[HTTPStatus, Any]:
        """``GET /logs?topology=ID&port=P[&offset=N]``: new lines of a worker's log file,
        for the caller that presents the topology's secret (nimbus)."""
        topology, port, offset = query.get("topology", ""), query.get("port", ""), query.get("offset")
        if not port.isdigit() or int(port) not in self.ports or (offset is not None and not offset.isdigit()):
            return HTTPStatus.BAD_REQUEST, {"error": "expected topology, one of this node's ports, offset"}
        record = self.state.read_topology(topology)
        if record is None:
            return HTTPStatus.NOT_FOUND, {"error": f"no topology {topology!r}"}
        if not hmac.compare_digest(auth or "", f"Bearer {record['secret']}"):
            return HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong topology secret"}
        lines, next_offset = read_new_lines(self._log_path(topology, int(port)),
                                            None if offset is None else int(offset))
        return HTTPStatus.OK, {"lines": lines, "offset": next_offset}

    def _log_path(self, topology: str, port: int) -> Path:
        return self.data_dir / "logs" / f"{topology}-{port}.log"

    def _assignments_changed(self, children: list[str]) -> bool:
        for topology in set(children) - self._watched:  # a DataWatch wakes us on its changes
            self._watched.add(topology)
            self.state.zk.DataWatch(self.state.path("assignments", topology), self._assignment_changed)
        self._wake.set()
        return not self._stopping.is_set()

    def _assignment_changed(self, data: bytes | None, stat: Any) -> bool:
        self._wake.set()
        return data is not None and not self._stopping.is_set()

    def desired(self) -> dict[int, tuple[str, tuple[int, ...]]]:
        """Port -> (topology, tasks) for the slots of this supervisor in the assignments."""
        wanted: dict[int, tuple[str, tuple[int, ...]]] = {}
        for topology, assignment in self.state.assignments().items():
            for worker in assignment.get("workers", {}).values():
                if worker["supervisor"] == self.id and worker["port"] in self.ports:
                    wanted[worker["port"]] = (topology, tuple(sorted(worker["tasks"])))
        return wanted

    def sync(self) -> None:
        """One round of making the worker processes match the assignments."""
        wanted = self.desired()
        now = time.monotonic()
        for port, old in list(self.slots.items()):
            if wanted.get(port) != (old.topology, old.tasks):
                self._stop_worker(port, old)
                del self.slots[port]
        for port, (topology, tasks) in wanted.items():
            slot = self.slots.setdefault(port, WorkerSlot(topology, tasks))
            if slot.process is not None and slot.process.poll() is not None:
                self._reap(port, slot, now)
            if slot.process is None and now >= slot.next_start:
                self._start_worker(port, slot)

    def _reap(self, port: int, slot: WorkerSlot, now: float) -> None:
        assert slot.process is not None
        code = slot.process.returncode
        lived = now - slot.started
        if lived < YOUNG_SECS:
            slot.failures += 1
            delay = min(2 ** (slot.failures - 1), MAX_BACKOFF_SECS)
        else:
            slot.failures, delay = 0, 0.0
        slot.next_start = now + delay
        self.metrics.worker_restarts.labels(topology_name(slot.topology)).inc()
        log.warning("supervisor %s: worker on port %d (%s) exited with %s after %.1f s; "
                    "restarting in %.1f s", self.id, port, slot.topology, code, lived, delay)
        slot.process = None

    def _code_dir(self, topology: str) -> Path:
        directory = self.data_dir / "code" / topology
        if not (directory / ".complete").exists():
            unpack(self.state.read_code(topology), directory)
            (directory / ".complete").touch()
        return directory

    def _start_worker(self, port: int, slot: WorkerSlot) -> None:
        code_dir = self._code_dir(slot.topology)
        log_path = self._log_path(slot.topology, port)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        rotate(log_path)
        cmd = [
            sys.executable, "-m", "streamflow.cli", "worker",
            "--zk", self.state.hosts, "--zk-root", self.state.root,
            "--topology", slot.topology, "--supervisor", self.id,
            "--host", self.host, "--port", str(port), "--code-dir", str(code_dir),
        ]
        env = dict(os.environ)
        if self.zk_auth:
            env["STREAMFLOW_ZK_AUTH"] = self.zk_auth  # not on the command line, where ps shows it
        with open(log_path, "ab") as out:
            slot.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            cwd=code_dir)
        slot.started = time.monotonic()
        self.metrics.worker_starts.labels(topology_name(slot.topology)).inc()
        log.info("supervisor %s: started worker pid %d on port %d for %s tasks %s",
                 self.id, slot.process.pid, port, slot.topology, list(slot.tasks))

    def _stop_worker(self, port: int, slot: WorkerSlot) -> None:
        process = slot.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_GRACE_SECS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("supervisor %s: stopped worker on port %d (%s)", self.id, port, slot.topology)

    def _shutdown(self) -> None:
        """Stop every worker, then deregister at once."""
        for slot in self.slots.values():
            if slot.process is not None and slot.process.poll() is None:
                slot.process.terminate()
        for port, slot in self.slots.items():
            self._stop_worker(port, slot)
        if self.registered:
            self.state.deregister_supervisor(self.id)
        log.info("supervisor %s stopped", self.id)

