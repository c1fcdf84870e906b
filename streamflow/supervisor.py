"""The supervisor: one per node (or pod); runs the worker processes nimbus assigns here.

It advertises its slots (ports) in an ephemeral znode, and then, on every assignment
change and every half second, registers again if that znode is gone (its session expired)
or not its own (left by the process before it), and makes the worker processes on this
node match the assignments: starts a worker (its own OS process, ``streamflow worker ...``)
for each slot assigned here, restarts one that died (at once if it had run a while; with a
growing back-off if it keeps dying young, as when its topology's code cannot load, or
cannot be started at all), and stops workers whose slot is no longer assigned here. The
code and logs of a topology no longer assigned here are removed once they have been idle
for :data:`FILES_KEPT_SECS`. On SIGTERM it stops its workers and removes its znode at
once, so nimbus reschedules without waiting for the session to expire.

Each worker's output (JSON log lines, :mod:`streamflow.logs`) goes to a file per
topology and slot, rotated by size while the worker runs (:mod:`streamflow.logpump`),
which the supervisor serves to nimbus at ``GET /logs`` on its health port, behind the
topology's secret. How each worker starts (memory cap, secrets on stdin, TLS files) is the
:class:`~streamflow.worker_slot.Launch` the supervisor's options make.

At start it refuses, in one line naming the option to change, an id that a live
supervisor holds and slot ports that another process holds: two supervisors started on
one host with the default options would otherwise fight over the id, and restart
workers that cannot bind their ports for ever.

With ``virtualenvs`` (``--virtualenvs``), a topology whose code holds a streamparse
``virtualenvs/NAME.txt`` gets its workers started only once a virtualenv of that file is
built (in the background, once per distinct file: :mod:`streamflow.multilang.virtualenvs`),
and its components' commands come from that virtualenv. A build that fails is the
topology's error (component ``__supervisor``) and its slots back off until a retry builds
it. Without the option such a file is ignored, which is logged once per topology.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
from http import HTTPStatus
from pathlib import Path

from kazoo.protocol.states import KazooState

from streamflow.errors import StreamflowError
from streamflow.httpapi import HttpApi, Request, Response, Route, metrics_route, probe_routes, serve
from streamflow.logs import read_new_lines
from streamflow.metrics import SupervisorMetrics, exposition
from streamflow.multilang.virtualenvs import TOPOLOGY_VIRTUALENV, VirtualenvError, Virtualenvs, requirements_file
from streamflow.package import unpack
from streamflow.worker_command import WorkerCommand
from streamflow.worker_slot import Launch, WorkerSlot, check_ports_free, stop_all, stop_pids, workers_of
from streamflow.zkstate import ClusterState, topology_name

log = logging.getLogger(__name__)

SYNC_SECS = 0.5
FILES_KEPT_SECS = 600.0
"""How long the code and logs of a topology no longer assigned here stay after their last
change: long enough to read a moved or killed topology's last lines, short enough that a
node's disk does not fill up with every submission's (each has a new id)."""
VIRTUALENVS_KEPT_SECS = 86400.0
"""How long a virtualenv no worker of this node uses stays: a resubmission of the same
topology the same day finds it built; one per changed requirements file does not fill
the disk."""
LOG_NAME = re.compile(r"(?P<topology>.+)-\d+\.log(\.1)?")
"""A worker's log file (:meth:`Supervisor._log_path`), or the one its log pump moved aside."""
TAKEN_ID_POLL_SECS = 0.2


class Supervisor:
    def __init__(
        self,
        state: ClusterState,
        supervisor_id: str,
        host: str,
        ports: list[int],
        data_dir: Path,
        launch: Launch | None = None,
        health_port: int = 0,
        virtualenvs: bool = False,
    ) -> None:
        self.state = state
        self.id = supervisor_id
        self.host = host
        self.ports = ports
        self.data_dir = data_dir.resolve()
        """Absolute: workers start in their code directory, where a relative one points nowhere."""
        self.launch = launch or Launch()
        self.health_port = health_port
        """Where it serves probes, ``/metrics`` and its workers' logs (0: nowhere)."""
        logs_url = f"http://{host}:{health_port}" if health_port else None  # where nimbus reads the logs
        self.slots: dict[int, WorkerSlot] = {}
        self.registered = False
        self._info = {"host": host, "ports": ports, "started": time.time(), "pid": os.getpid(),
                      "hostname": socket.gethostname(), "logs_url": logs_url}
        self.metrics = SupervisorMetrics()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.virtualenvs = Virtualenvs(self.data_dir / "virtualenvs", self._wake.set) if virtualenvs else None
        """The topologies' virtualenvs, when this node builds them; a build wakes the loop when it ends."""
        self._requirements: dict[str, Path | None] = {}
        """Per topology: its requirements file (``virtualenvs/NAME.txt``), if it has one; a
        topology's code never changes."""
        self._reported: dict[str, float] = {}
        """Per topology: when the failed build last reported as its error failed."""

    def run(self) -> None:
        """Stay registered and keep workers in line with the assignments until SIGTERM/SIGINT.
        Raises :class:`StreamflowError` at start if its id or slot ports are taken."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        check_id_free(self.state, self.id)
        self._stop_orphans()
        check_ports_free(self.host, self.ports)
        self.state.on_connection_change(self._connection_changed)
        self.state.watch_assignments(self._assignments_changed)
        log.info("supervisor %s on %s offers ports %s", self.id, self.host, self.ports)
        while not self._stopping.is_set():
            for step in (self.keep_registered, self.sync):
                try:
                    step()
                except Exception:
                    log.exception("supervisor %s: %s failed; retrying", self.id, step.__name__)
            self._wake.wait(SYNC_SECS)
            self._wake.clear()
        self._shutdown()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def keep_registered(self) -> None:
        """Register this node's slots unless its znode is there and this session's. A
        session that expired took the znode with it, and a process restarted within the
        old session's timeout finds the old process's znode, which goes when that session
        ends: either way nimbus would no longer schedule here."""
        self.registered = self.state.supervisor_registered(self.id)
        if not self.registered:
            self.state.register_supervisor(self.id, self._info)
            self.registered = True
            log.info("supervisor %s registered its slots", self.id)

    def _connection_changed(self, state: str) -> None:
        """A kazoo listener (it must not block): a lost session took the znode with it, so
        this node is not ready until the loop, woken here, registers it again."""
        if state == KazooState.LOST:
            self.registered = False
        self._wake.set()

    def ready(self) -> tuple[bool, str]:
        """Ready when its slots are registered and ZooKeeper is connected."""
        if not self.registered or self._stopping.is_set():
            return False, "slots not registered"
        if not self.state.connected:
            return False, f"ZooKeeper connection {self.state.connection}"
        return True, f"{len(self.ports)} slots registered"

    def logs(self, request: Request) -> Response:
        """``GET /logs?topology=ID&port=P[&offset=N]``: new lines of a worker's log file,
        for the caller that presents the topology's secret (nimbus)."""
        query = request.query
        topology, port, offset = query.get("topology", ""), query.get("port", ""), query.get("offset")
        if not port.isdigit() or int(port) not in self.ports or (offset is not None and not offset.isdigit()):
            return Response.error(HTTPStatus.BAD_REQUEST, "expected topology, one of this node's ports, offset")
        record = self.state.read_topology(topology)
        if record is None:
            return Response.error(HTTPStatus.NOT_FOUND, f"no topology {topology!r}")
        auth = request.headers.get("authorization", "")
        if not auth.isascii() or not hmac.compare_digest(auth, f"Bearer {record.secret}"):
            return Response.error(HTTPStatus.UNAUTHORIZED, "missing or wrong topology secret")
        lines, next_offset = read_new_lines(self._log_path(topology, int(port)),
                                            None if offset is None else int(offset))
        return Response.json(HTTPStatus.OK, {"lines": lines, "offset": next_offset})

    def _log_path(self, topology: str, port: int) -> Path:
        return self.data_dir / "logs" / f"{topology}-{port}.log"

    def _assignments_changed(self) -> bool:
        """Wake the loop (on kazoo's thread, at any change of an assignment)."""
        self._wake.set()
        return not self._stopping.is_set()

    def desired(self) -> dict[int, tuple[str, tuple[int, ...]]]:
        """Port -> (topology, tasks) for the slots of this supervisor in the assignments."""
        wanted: dict[int, tuple[str, tuple[int, ...]]] = {}
        for topology, assignment in self.state.assignments().items():
            for worker in assignment.on_supervisor(self.id):
                if worker.port in self.ports:
                    wanted[worker.port] = (topology, worker.tasks)
        return wanted

    def sync(self) -> None:
        """One round of making the worker processes (and files) match the assignments."""
        wanted = self.desired()
        now = time.monotonic()
        obsolete = {port: slot for port, slot in self.slots.items()
                    if wanted.get(port) != (slot.topology, slot.tasks)}
        stop_all(obsolete)
        for port in obsolete:
            del self.slots[port]
        for port, (topology, tasks) in wanted.items():
            slot = self.slots.setdefault(port, WorkerSlot(topology, tasks))
            if (exited := slot.reap(now)) is not None:
                code, lived, delay = exited
                self.metrics.worker_restarts.labels(topology_name(slot.topology)).inc()
                log.warning("supervisor %s: worker on port %d (%s) exited with %s after %.1f s; "
                            "restarting in %.1f s", self.id, port, slot.topology, code, lived, delay)
            if slot.due(now):
                self._try_start(port, slot, now)
        self._remove_idle_files({slot.topology for slot in self.slots.values()})

    def _try_start(self, port: int, slot: WorkerSlot, now: float) -> None:
        """Start the slot's worker, once its virtualenv (if it needs one) is built. One
        that cannot start (a full disk; its code gone, as when the topology is being
        removed; its virtualenv failed to build) backs off as a worker dying young does,
        and the other slots start meanwhile."""
        try:
            code_dir = self._code_dir(slot.topology)
            ready, venv = self._virtualenv(slot.topology, code_dir)
            if ready:
                self._start_worker(port, slot, code_dir, venv)
        except Exception as exc:
            delay = slot.failed(now)
            log.warning("supervisor %s: cannot start the worker on port %d (%s): %s: %s; retrying in %.1f s",
                        self.id, port, slot.topology, type(exc).__name__, exc, delay)
            if isinstance(exc, VirtualenvError):
                self._report_virtualenv_error(slot.topology, exc)

    def _virtualenv(self, topology: str, code_dir: Path) -> tuple[bool, Path | None]:
        """Whether the topology's workers can start, and the virtualenv they start with:
        none when the topology has no requirements file or this node builds no
        virtualenvs; not ready while its virtualenv is being built. Raises
        :class:`VirtualenvError` when its build failed."""
        if topology not in self._requirements:
            record = self.state.read_topology(topology)
            if record is None:  # being removed: the worker says so
                return True, None
            found = self._requirements[topology] = requirements_file(code_dir, record.file, record.config)
            if found is not None and self.virtualenvs is None:
                log.info("supervisor %s: %s has %s; it is ignored, as this supervisor builds no virtualenvs "
                         "(--virtualenvs): its components run in streamflow's environment", self.id, topology,
                         found.relative_to(code_dir.resolve()))
        requirements = self._requirements[topology]
        if requirements is None or self.virtualenvs is None:
            return True, None
        venv = self.virtualenvs.get(requirements, code_dir.resolve(), topology)
        return venv is not None, venv

    def _report_virtualenv_error(self, topology: str, exc: VirtualenvError) -> None:
        """Record a failed build as the topology's error (``status`` shows it), once per failure."""
        if self._reported.get(topology) == exc.failed_at:
            return
        self._reported[topology] = exc.failed_at
        self.state.record_error(topology, "__supervisor", {
            "time": exc.failed_at, "task": None, "worker": self.id, "host": self.host, "port": None,
            "message": f"cannot build the virtualenv: {exc}",
        })

    def _code_dir(self, topology: str) -> Path:
        directory = self.data_dir / "code" / topology
        if not (directory / ".complete").exists():
            unpack(self.state.read_code(topology), directory)
            (directory / ".complete").touch()
        return directory

    def _start_worker(self, port: int, slot: WorkerSlot, code_dir: Path, venv: Path | None) -> None:
        log_path = self._log_path(slot.topology, port)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = WorkerCommand(self.state.hosts, self.state.root, self.state.session_timeout, slot.topology,
                                self.id, self.host, port, code_dir, self.launch.tls, self.launch.metrics_open)
        env = dict(os.environ)
        env.pop(TOPOLOGY_VIRTUALENV, None)
        if venv is not None:
            env[TOPOLOGY_VIRTUALENV] = str(venv)
        pid = slot.start(command, self.launch, env, log_path, venv)
        self.metrics.worker_starts.labels(topology_name(slot.topology)).inc()
        log.info("supervisor %s: started worker pid %d on port %d for %s tasks %s%s",
                 self.id, pid, port, slot.topology, list(slot.tasks), f" with virtualenv {venv}" if venv else "")

    def _stop_orphans(self) -> None:
        """Stop the workers of this node's slots that the process before this one left
        running (a supervisor killed with -9 leaves its workers behind). This process
        cannot watch them, and they hold the slots' ports, so the workers it starts could
        not bind them. The slots then start afresh (what was in flight in them is
        replayed), as they would if the node's container had restarted."""
        orphans = workers_of(self.id, self.ports)
        if orphans:
            log.warning("supervisor %s: stopping workers left by an earlier supervisor process: pids %s",
                        self.id, sorted(orphans))
            stop_pids(orphans)

    def _remove_idle_files(self, running: set[str]) -> None:
        """Remove the code and logs of each topology not in ``running`` whose files have not
        changed for :data:`FILES_KEPT_SECS`: every submission has a new id, and its files
        would stay on this node's disk for good. Likewise the virtualenvs no worker here
        used for :data:`VIRTUALENVS_KEPT_SECS`."""
        if self.virtualenvs is not None:
            self.virtualenvs.mark_used({slot.virtualenv for slot in self.slots.values() if slot.virtualenv})
            for venv in self.virtualenvs.remove_idle(VIRTUALENVS_KEPT_SECS):
                log.info("supervisor %s: removed the virtualenv %s, unused for %.0f h", self.id, venv,
                         VIRTUALENVS_KEPT_SECS / 3600)
        idle_since = time.time() - FILES_KEPT_SECS
        for topology, paths in self._files().items():
            if topology in running or any(path.stat().st_mtime > idle_since for path in paths):
                continue
            for path in paths:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            self._requirements.pop(topology, None)
            self._reported.pop(topology, None)
            log.info("supervisor %s: removed the code and logs of %s", self.id, topology)

    def _files(self) -> dict[str, list[Path]]:
        """Each topology's worker logs and code directory on this node, the code last (the
        code directory tells that a topology has files here, until they are all gone)."""
        files: dict[str, list[Path]] = {}
        for path in _entries(self.data_dir / "logs"):
            if match := LOG_NAME.fullmatch(path.name):
                files.setdefault(match["topology"], []).append(path)
        for path in _entries(self.data_dir / "code"):
            files.setdefault(path.name, []).append(path)
        return files

    def _shutdown(self) -> None:
        """Stop the virtualenv builds under way and every worker, then deregister at once."""
        if self.virtualenvs is not None:
            self.virtualenvs.stop()
        stop_all(self.slots)
        if self.registered:
            self.state.deregister_supervisor(self.id)
        log.info("supervisor %s stopped", self.id)



def _entries(directory: Path) -> list[Path]:
    """The entries of ``directory``, none if it does not exist (yet)."""
    return list(directory.iterdir()) if directory.is_dir() else []


def check_id_free(state: ClusterState, supervisor_id: str) -> None:
    """Raise :class:`StreamflowError` in one line if a live supervisor is registered as
    ``supervisor_id``. A registration left by this node's earlier process (killed, or its
    container restarted) is no obstacle: on this host, its process is gone or is this
    one; from another host, its session expires within the session timeout."""
    info = state.supervisors().get(supervisor_id)
    if info is None:
        return
    if info.get("hostname") == socket.gethostname():
        pid = info.get("pid")
        if not isinstance(pid, int) or pid == os.getpid() or not _is_supervisor(pid):
            return
    else:
        deadline = time.monotonic() + 2 * state.session_timeout
        while time.monotonic() < deadline:
            if supervisor_id not in state.supervisors():
                return
            time.sleep(TAKEN_ID_POLL_SECS)
    raise StreamflowError(f"supervisor id {supervisor_id!r} is taken by a running supervisor (pid "
                          f"{info.get('pid')} on {info.get('hostname')}): give this one another --id "
                          "(STREAMFLOW_ID)")


def _is_supervisor(pid: int) -> bool:
    """Whether ``pid`` runs ``streamflow supervisor`` on this host."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"supervisor" in argv and any(b"streamflow" in part for part in argv)


def serve_health(supervisor: Supervisor) -> None:
    """Serve the supervisor's probes, ``/metrics`` (behind the API token, as its workers'
    is, unless ``--metrics-open``) and its workers' logs (behind each topology's secret) on
    its health port, from a daemon thread; nothing without one. A port that is taken is one
    line naming the option."""
    if not supervisor.health_port:
        return
    launch = supervisor.launch
    routes = {**probe_routes(supervisor.ready),
              **metrics_route(lambda: exposition(supervisor.metrics.registry), auth=not launch.metrics_open),
              ("GET", "/logs"): Route(supervisor.logs, auth=False)}
    try:
        serve(HttpApi(routes, launch.secrets.token), supervisor.host, supervisor.health_port,
              "supervisor health probes")
    except StreamflowError as exc:
        raise StreamflowError(f"{exc}: give another --health-port (STREAMFLOW_HEALTH_PORT), or 0 for none") \
            from None
