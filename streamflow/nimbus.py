"""Nimbus: the master. Accepts topologies, schedules their tasks, follows their workers.

Several nimbus processes can run; one is leader through ZooKeeper leader election
(kazoo's Election recipe) and is the only writer of assignments: it runs the scheduling
pass (:mod:`streamflow.leader`). Every nimbus serves the same HTTP API
(:mod:`streamflow.nimbus_api`); a standby forwards each call to the leader, so any nimbus
address works for the CLI. Running topologies keep running while no leader is up:
workers and supervisors act on the assignments already in ZooKeeper.

The operations are the methods of :attr:`Nimbus.ops`: each takes the request's JSON body
(a GET's query parameters) and the topology name from the path, and returns a JSON-able
answer or raises :class:`~streamflow.httpapi.ApiError`.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus
from typing import Any, Callable, Sequence

from kazoo.protocol.states import KazooState
from prometheus_client import CollectorRegistry, Counter

from streamflow import views
from streamflow.config import validate_config
from streamflow.errors import StreamflowError
from streamflow.httpapi import ApiError
from streamflow.leader import SCHEDULE_SECS, SchedulingPass
from streamflow.logs import LEVELS
from streamflow.metrics import TopologyCollector
from streamflow.nimbus_input import describe, kill_wait, parse_rebalance, parse_submission
from streamflow.records import TopologyRecord
from streamflow.scheduler import Timeouts
from streamflow.zkstate import ClusterState, new_topology_id

log = logging.getLogger(__name__)

LOGS_TIMEOUT_SECS = 5.0

Op = Callable[[dict[str, Any], str], Any]


class Nimbus:
    def __init__(
        self,
        state: ClusterState,
        host: str,
        port: int,
        worker_timeout: float = 30.0,
        launch_timeout: float = 120.0,
        client_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.state = state
        self.client_tls = client_tls
        """How this nimbus checks another's HTTPS certificate when it forwards a call; with
        one, its own API is HTTPS too (the URL it registers says so)."""
        self.host, self.port = host, port
        self.url = f"{'https' if client_tls else 'http'}://{host}:{port}"
        self.worker_timeout = worker_timeout
        self.leading = threading.Event()
        self._stopping = threading.Event()
        self._draining = threading.Event()
        self._session_lost = threading.Event()
        self._lock = threading.RLock()
        self.election = state.election(self.url)
        self.registry = CollectorRegistry()
        self.registry.register(TopologyCollector(self._exported_statuses))
        reassignments = Counter("streamflow_reassignments", "Assignments changed for a running topology",
                                ["topology"], registry=self.registry)
        self.scheduling = SchedulingPass(state, Timeouts(worker_timeout, launch_timeout), reassignments)
        self.ops: dict[tuple[str, str], Op] = {
            ("POST", "submit"): self.submit,
            ("GET", "list"): self.list,
            ("GET", "status"): self.status,
            ("POST", "kill"): self.kill,
            ("POST", "activate"): self.activate,
            ("POST", "deactivate"): self.deactivate,
            ("POST", "rebalance"): self.rebalance,
            ("POST", "config"): self.set_config,
            ("POST", "log-level"): self.set_log_level,
            ("GET", "logs"): self.logs,
            ("GET", "cluster"): self.cluster,
        }

    # -- leadership -------------------------------------------------------------------

    def start(self) -> None:
        """Register this nimbus and run for leader on a thread of its own."""
        self.state.register_nimbus(self.url)
        self.state.on_connection_change(self._connection_changed)
        threading.Thread(target=self._campaign, name="nimbus-election", daemon=True).start()

    def drain(self) -> None:
        """Answer ``/readyz`` with 503 from now on: a load balancer stops sending calls
        while the ones in flight finish (SIGTERM, before :meth:`stop`)."""
        self._draining.set()

    def stop(self) -> None:
        """Give up leadership at once (a standby takes over) and stop."""
        self._stopping.set()
        self.leading.clear()
        self.election.cancel()

    def _connection_changed(self, state: str) -> None:
        """Stop leading on a lost connection; register again once a new session is up
        (the registration is an ephemeral node: it went with the old session). Runs on
        kazoo's thread, so the registration is spawned, not done here."""
        if state == KazooState.LOST:
            self._session_lost.set()
        elif state == KazooState.CONNECTED and self._session_lost.is_set():
            self._session_lost.clear()
            self.state.spawn(self.state.register_nimbus, self.url)
        if state != KazooState.CONNECTED and self.leading.is_set():
            log.warning("nimbus %s: ZooKeeper connection %s; no longer leading", self.url, state)
            self.leading.clear()

    def _campaign(self) -> None:
        while not self._stopping.is_set():
            try:
                self.election.run(self._lead)
            except Exception:
                log.exception("nimbus %s: election failed; retrying", self.url)
                time.sleep(1)

    def _lead(self) -> None:
        """Runs while this nimbus holds the leader lock: schedule until it is lost."""
        self.leading.set()
        log.info("nimbus %s is the leader", self.url)
        while self.leading.is_set() and not self._stopping.is_set():
            try:
                self.schedule_all()
            except Exception:
                log.exception("nimbus %s: scheduling failed; retrying", self.url)
            time.sleep(SCHEDULE_SECS)
        log.info("nimbus %s stopped leading", self.url)

    def schedule_all(self) -> None:
        """One scheduling pass, under the lock the operations that write records take."""
        with self._lock:
            self.scheduling.run()

    def ready(self) -> tuple[bool, str]:
        """Ready when connected to ZooKeeper and a leader (this nimbus or another) is known,
        and not shutting down."""
        if self._draining.is_set():
            return False, "shutting down"
        if not self.state.connected:
            return False, f"ZooKeeper connection {self.state.connection}"
        leader = self.leader_url()
        if leader is None:
            return False, "no nimbus leader elected"
        return True, "leader" if leader == self.url else f"standby of {leader}"

    def leader_url(self) -> str | None:
        try:
            contenders = self.election.contenders()
        except Exception:
            return None
        return contenders[0] if contenders else None

    # -- operations -------------------------------------------------------------------

    def _find(self, name: str) -> TopologyRecord:
        for record in self.state.topologies().values():
            if record.name == name and record.status != "killed":
                return record
        raise ApiError(HTTPStatus.NOT_FOUND, f"no topology named {name!r}")

    def submit(self, body: dict[str, Any], _: str) -> Any:
        """Load the code (outside the lock: it may take a minute), then record the
        topology and schedule it, unless one of that name was submitted meanwhile."""
        submission = parse_submission(body)
        self._refuse_if_running(submission.name)
        description = describe(submission.package, submission.file, submission.config)
        record = TopologyRecord(
            id=new_topology_id(submission.name), name=submission.name, file=submission.file,
            secret=secrets.token_hex(16), config=submission.config,
            workers=description["config"]["topology.workers"], description=description, submitted=time.time(),
        )
        with self._lock:
            self._refuse_if_running(record.name)
            self.state.write_code(record.id, submission.package)
            self.state.write_topology(record)
            self.scheduling.run()
        log.info("nimbus: submitted %s as %s", record.name, record.id)
        return {"id": record.id, "name": record.name}

    def _refuse_if_running(self, name: str) -> None:
        try:
            self._find(name)
        except ApiError:
            return
        raise ApiError(HTTPStatus.CONFLICT, f"a topology named {name!r} is already running")

    def list(self, body: dict[str, Any], _: str) -> Any:
        now = time.time()
        return {"topologies": [views.summary(record, self.state.read_assignment(topology_id), now)
                               for topology_id, record in self.state.topologies().items()]}

    def status(self, body: dict[str, Any], name: str) -> Any:
        record = self._find(name)
        return views.status(record, self.state.read_assignment(record.id), self.state.heartbeats(record.id),
                            self.state.errors(record.id), time.time(), self.worker_timeout)

    def _exported_statuses(self) -> Sequence[dict[str, Any]]:
        """What /metrics exports: the statuses on the leader only, so that a ``sum()``
        over every nimbus's series counts each topology once."""
        return self._statuses() if self.leading.is_set() else []

    def _statuses(self) -> Sequence[dict[str, Any]]:
        """``status`` of every running topology (any nimbus reads them from ZooKeeper)."""
        statuses = []
        for record in self.state.topologies().values():
            if record.status != "killed":
                try:
                    statuses.append(self.status({}, record.name))
                except ApiError:
                    continue  # killed meanwhile
        return statuses

    def _change(self, name: str, change: Callable[[TopologyRecord], None]) -> TopologyRecord:
        """Apply ``change`` to a running topology's record and write it back, under the lock."""
        with self._lock:
            record = self._find(name)
            change(record)
            self.state.write_topology(record)
        return record

    def activate(self, body: dict[str, Any], name: str) -> Any:
        record = self._change(name, lambda r: setattr(r, "status", "active"))
        return {"id": record.id, "status": record.status}

    def deactivate(self, body: dict[str, Any], name: str) -> Any:
        record = self._change(name, lambda r: setattr(r, "status", "inactive"))
        return {"id": record.id, "status": record.status}

    def kill(self, body: dict[str, Any], name: str) -> Any:
        """Deactivate, let in-flight tuples finish for ``wait`` seconds (default: the
        message timeout), then stop the workers and forget the topology. The time to
        remove it is kept in its record, not in this process: the leader's scheduling
        pass removes it, whichever nimbus leads by then."""
        with self._lock:
            record = self._find(name)
            wait = kill_wait(body, record)
            record.status = "killed"
            record.remove_at = time.time() + wait
            self.state.write_topology(record)
        return {"id": record.id, "status": "killed", "wait": wait}

    def rebalance(self, body: dict[str, Any], name: str) -> Any:
        def rebalance(record: TopologyRecord) -> None:
            asked = parse_rebalance(body, record)
            if asked.workers is not None:
                record.workers = asked.workers
                record.config["topology.workers"] = asked.workers
            record.parallelism.update(asked.parallelism)

        with self._lock:
            record = self._change(name, rebalance)
            self.scheduling.run()
        return {"id": record.id, "workers": record.workers, "parallelism": record.parallelism}

    def set_config(self, body: dict[str, Any], name: str) -> Any:
        """Change config keys of a running topology; spouts apply what they can at once
        (``Spout.reconfigure``), such as Kafka client quotas."""
        changes = body.get("config")
        if not isinstance(changes, dict) or not changes:
            raise ApiError(HTTPStatus.BAD_REQUEST, "config must be a non-empty object")

        def change(record: TopologyRecord) -> None:
            try:
                validate_config({**record.config, **changes})
            except StreamflowError as exc:
                raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from None
            record.config.update(changes)

        record = self._change(name, change)
        return {"id": record.id, "config": record.config}

    def set_log_level(self, body: dict[str, Any], name: str) -> Any:
        """Set the log level of every worker of a topology (they follow it at once)."""
        level = str(body.get("level", "")).upper()
        if level not in LEVELS:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"level must be one of {', '.join(LEVELS)}, "
                           f"got {body.get('level')!r}")
        record = self._change(name, lambda r: setattr(r, "log_level", level))
        return {"id": record.id, "log_level": level}

    def logs(self, body: dict[str, Any], name: str) -> Any:
        """New log lines of a topology's workers, read from their supervisors and merged
        by time. ``component`` keeps that component's lines; ``cursor`` (the JSON of a
        previous answer's cursor) returns only lines written since."""
        record = self._find(name)
        try:
            cursor = json.loads(body.get("cursor") or "{}")
        except ValueError:
            cursor = None
        if not isinstance(cursor, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "cursor must be the cursor of an earlier answer")
        component = body.get("component")
        supervisors = self.state.supervisors()
        assignment = self.state.read_assignment(record.id)
        timed: list[tuple[float, dict[str, Any]]] = []
        next_cursor, unreachable = {}, []
        for slot, w in sorted((assignment.workers if assignment is not None else {}).items()):
            url = supervisors.get(w.supervisor, {}).get("logs_url")
            query = {"topology": record.id, "port": w.port}
            if isinstance(cursor.get(slot), int):
                query["offset"] = cursor[slot]
            try:
                if url is None:
                    raise OSError("its supervisor serves no logs (--health-port 0)")
                answer = _get_json(f"{url}/logs?{urllib.parse.urlencode(query)}", record.secret)
            except (OSError, ValueError) as exc:
                unreachable.append({"worker": slot, "error": str(exc)})
                if slot in cursor:
                    next_cursor[slot] = cursor[slot]
                continue
            next_cursor[slot] = answer["offset"]
            when = 0.0
            for line in answer["lines"]:
                when = line["time"] if line.get("time") is not None else when  # raw lines keep their place
                line.setdefault("worker", slot)
                if component is None or line.get("component") == component:
                    timed.append((when, line))
        timed.sort(key=lambda pair: pair[0])
        return {"lines": [line for _, line in timed], "cursor": next_cursor, "unreachable": unreachable}

    def cluster(self, body: dict[str, Any], _: str) -> Any:
        return views.cluster(self.leader_url(), self.state.nimbus_urls(), self.state.supervisors(),
                             self.state.assignments(), self._statuses())


def _get_json(url: str, token: str) -> Any:
    """GET a JSON answer with a bearer token; raises OSError (unreachable, refused) or
    ValueError (not JSON)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=LOGS_TIMEOUT_SECS) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise OSError(f"{url.split('?')[0]} answered {exc.code}: {exc.read()[:200]!r}") from None

