"""A cluster worker: the process that runs one slot's tasks of one topology.

Started by a supervisor (``streamflow worker ...``). It loads the topology from the code
package the supervisor unpacked, runs the tasks nimbus assigned to its slot in one
:class:`~streamflow.worker.Worker` (one uvloop event loop) with the TCP transport, follows
assignment changes (new addresses of peer tasks), activates and deactivates its spouts
with the topology, and writes a heartbeat with its task counters to ZooKeeper.

It exits, for its supervisor to act on, when its slot's tasks change (exit 0, restarted
with the new tasks), when it cannot load the topology (:data:`EXIT_BAD_CODE`, restarted
only after a back-off, the error kept in ZooKeeper for ``status``) or on SIGTERM.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, NamedTuple

import uvloop
from prometheus_client import CollectorRegistry

from streamflow.errors import ConfigError, StreamflowError
from streamflow.executor import TaskFailed
from streamflow.loader import load_topology
from streamflow.logs import log_to_stderr_as_json
from streamflow.metrics import WorkerCollector, exposition
from streamflow.records import Assignment, TopologyRecord
from streamflow.telemetry import Report
from streamflow.topology import Topology
from streamflow.transport import tls
from streamflow.transport.tcp import Codec, TcpTransport
from streamflow.worker import Worker, worker_gc
from streamflow.worker_command import WorkerCommand, WorkerSecrets
from streamflow.zkstate import ClusterState

log = logging.getLogger(__name__)

EXIT_BAD_CODE = 3
HEARTBEAT_SECS = 1.0


def load_assigned_topology(record: TopologyRecord, code_dir: Path) -> Topology:
    """The topology as nimbus runs it: the submitted code and config, with the current
    worker count and any parallelism a rebalance set."""
    topology = load_topology(code_dir / record.file, record.config)
    if record.parallelism:
        topology = topology.with_parallelism(record.parallelism)
    return topology.with_config({"topology.workers": record.workers})


def dump_tasks() -> None:
    """Log the stack of every asyncio task (``kill -USR1 <worker pid>``): where each
    executor and link waits, for a worker that looks stuck."""
    for task in asyncio.all_tasks():
        stream = io.StringIO()
        task.print_stack(file=stream)
        log.warning("task %s:\n%s", task.get_name(), stream.getvalue())


def run_worker(settings: WorkerCommand, secrets: WorkerSecrets) -> int:
    """Run until the slot's assignment changes or SIGTERM; returns the exit code."""
    log_to_stderr_as_json({"topology": settings.topology_id, "worker": settings.slot}, "INFO")
    state = ClusterState(settings.zk, settings.zk_root, secrets.zk_auth, settings.zk_session_timeout)
    state.start(timeout=settings.zk_session_timeout)
    try:
        with worker_gc(), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            metrics_token = None if settings.metrics_open else secrets.token
            return runner.run(WorkerProcess(settings, state, metrics_token).run())
    finally:
        state.stop()


class _NewError(NamedTuple):
    """A task's last error, not yet recorded in ZooKeeper: its record, and the task's
    error count once it is."""

    component: str
    task: int
    errors_so_far: int
    record: dict[str, Any]


class WorkerProcess:
    def __init__(self, settings: WorkerCommand, state: ClusterState, metrics_token: str | None = None) -> None:
        self.settings = settings
        self.state = state
        self.metrics_token = metrics_token
        """What the slot port's ``/metrics`` needs (None: open)."""
        self.slot = settings.slot
        self.started = time.time()
        self._stop = asyncio.Event()
        self._exit_code = 0
        self._reported_errors: dict[int, int] = {}
        self._config: dict[str, Any] | None = None
        self.reports: list[Report] = []
        """The tasks' reports of the last heartbeat: what ``/metrics`` serves."""

    async def run(self) -> int:
        s = self.settings
        loop = asyncio.get_running_loop()
        record = self.state.read_topology(s.topology_id)
        assignment = self.state.read_assignment(s.topology_id)
        if record is None or assignment is None or self.slot not in assignment.workers:
            log.warning("worker %s: topology %s is not assigned here; exiting", self.slot, s.topology_id)
            return 0
        try:
            topology = load_assigned_topology(record, s.code_dir)
            codec = Codec(topology)
        except StreamflowError as exc:  # its code, or its topology.serializer.register
            self._report("__worker", f"cannot load the topology: {exc}")
            return EXIT_BAD_CODE
        try:
            server_tls, client_tls = tls.contexts(*s.tls) if s.tls is not None else (None, None)
        except ConfigError as exc:
            self._report("__worker", f"cannot set up TLS: {exc}")
            return EXIT_BAD_CODE
        self._config = record.config
        logging.getLogger().setLevel(record.log_level)
        tasks = frozenset(assignment.workers[self.slot].tasks)
        self.tasks = tasks
        secret = bytes.fromhex(record.secret)
        transports: list[TcpTransport] = []
        registry = CollectorRegistry()
        registry.register(WorkerCollector(record.name, lambda: self.reports))

        def make_transport(inboxes: Any) -> TcpTransport:
            transport = TcpTransport(inboxes, codec, secret, lambda: exposition(registry), server_tls=server_tls,
                                     client_tls=client_tls, metrics_token=self.metrics_token)
            transports.append(transport)
            return transport

        worker = Worker(topology, tasks, transport=make_transport)
        transport = self._transport = transports[0]
        transport.update_routes({t: a for t, a in assignment.routes().items() if t not in tasks})
        await transport.serve(s.host, s.port)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        self._watch(loop, worker, transport)
        if record.status == "inactive":
            for spout in worker.spouts:
                spout.deactivate()
        worker.start()
        log.info("worker %s runs tasks %s of %s", self.slot, sorted(tasks), s.topology_id)
        beats = asyncio.create_task(self._heartbeats(worker))
        try:
            crashed = asyncio.create_task(self._watch_tasks(worker))
            await asyncio.wait({crashed, asyncio.create_task(self._stop.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            crashed.cancel()
        finally:
            beats.cancel()
            await worker.stop()
            await transport.close()
            await loop.run_in_executor(None, self._beat, *self._beat_of(worker))
        return self._exit_code

    async def _watch_tasks(self, worker: Worker) -> None:
        """Return when a task could not start (its error reported), so the worker exits."""
        try:
            await worker.run_until_finished()
        except TaskFailed as exc:
            self._report("__worker", str(exc))
            self._exit_code = EXIT_BAD_CODE
            return
        await asyncio.Event().wait()  # finite spouts done: keep serving until told to stop

    def _watch(self, loop: asyncio.AbstractEventLoop, worker: Worker, transport: TcpTransport) -> None:
        """Follow the assignment and the topology's status (kazoo calls back on its own
        thread; the changes are applied on the event loop)."""
        s = self.settings

        def on_assignment(assignment: Assignment | None) -> None:
            loop.call_soon_threadsafe(self._assignment_changed, assignment, transport)

        def on_topology(record: TopologyRecord | None) -> None:
            loop.call_soon_threadsafe(self._status_changed, record, worker)

        self.state.watch_assignment(s.topology_id, on_assignment)
        self.state.watch_topology(s.topology_id, on_topology)

    def _assignment_changed(self, assignment: Assignment | None, transport: TcpTransport) -> None:
        mine = assignment.workers.get(self.slot) if assignment is not None else None
        if assignment is None or mine is None or frozenset(mine.tasks) != self.tasks:
            log.info("worker %s: tasks changed; exiting for a restart", self.slot)
            self._stop.set()
            return
        transport.update_routes({t: a for t, a in assignment.routes().items() if t not in self.tasks})

    def _status_changed(self, record: TopologyRecord | None, worker: Worker) -> None:
        """Activate or deactivate the spouts, hand them a changed config, follow the
        topology's log level."""
        logging.getLogger().setLevel(record.log_level if record is not None else "INFO")
        active = record is not None and record.status == "active"
        config = record.config if record is not None else None
        for spout in worker.spouts:
            if spout.active != active:
                (spout.activate if active else spout.deactivate)()
            if config is not None and config != self._config:
                spout.reconfigure(config)
        self._config = config

    async def _heartbeats(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(None, self._beat, *self._beat_of(worker))
            await asyncio.sleep(HEARTBEAT_SECS)

    def _beat_of(self, worker: Worker) -> tuple[list[Report], list[_NewError]]:
        """The tasks' reports and their errors not yet recorded, taken on the event loop:
        a report calls the component's ``metrics()``, which must not run beside its task."""
        s = self.settings
        reports = self.reports = [executor.report() for executor in worker.executors]
        errors = []
        for executor in worker.executors:
            st = executor.stats
            if st.last_error is not None and st.errors != self._reported_errors.get(st.task, 0):
                errors.append(_NewError(st.component, st.task, st.errors, {
                    "time": st.last_error.time, "task": st.task, "worker": self.slot,
                    "host": s.host, "port": s.port, "message": st.last_error.message,
                }))
        return reports, errors

    def _beat(self, reports: list[Report], errors: list[_NewError]) -> None:
        """Write new errors and the heartbeat (ZooKeeper I/O, off the loop). A failed write
        is logged and done again at the next beat, so a brief ZooKeeper outage loses no
        error and stops no heartbeat."""
        s = self.settings
        try:
            for error in errors:
                self.state.record_error(s.topology_id, error.component, error.record)
                self._reported_errors[error.task] = error.errors_so_far
            self.state.write_heartbeat(s.topology_id, self.slot, {
                "time": time.time(), "started": self.started, "pid": os.getpid(),
                "host": s.host, "port": s.port, "hostname": socket.gethostname(),
                "tasks": sorted(self.tasks), "stats": reports, "dropped": self._transport.dropped,
            })
        except Exception as exc:  # ZooKeeper briefly away: the next beat retries
            log.warning("worker %s: heartbeat failed: %s", self.slot, exc)

    def _report(self, component: str, message: str) -> None:
        s = self.settings
        log.error("worker %s: %s", self.slot, message)
        self.state.record_error(s.topology_id, component, {
            "time": time.time(), "task": None, "worker": self.slot, "host": s.host,
            "port": s.port, "message": message,
        })
