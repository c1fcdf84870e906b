"""Nimbus: the master. Accepts topologies, schedules their tasks, follows their workers.

Several nimbus processes can run; one is leader through ZooKeeper leader election
(kazoo's Election recipe) and is the only writer of assignments. Every nimbus serves the
same HTTP JSON API; a standby forwards each call to the leader, so any nimbus address
works for the CLI. Running topologies keep running while no leader is up: workers and
supervisors act on the assignments already in ZooKeeper.

The API is a table of operations (:attr:`Nimbus.routes`), each a method that takes the
request's JSON body and returns a JSON-able answer or raises :class:`ApiError`.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Sequence

from kazoo.protocol.states import KazooState
from prometheus_client import CollectorRegistry, Counter

from streamflow import webui
from streamflow.config import validate_config
from streamflow.errors import StreamflowError
from streamflow.health import PROMETHEUS_TEXT, probe
from streamflow.logs import LEVELS
from streamflow.metrics import TopologyCollector, exposition
from streamflow.package import unpack
from streamflow.scheduler import Slot, schedule
from streamflow.telemetry import Report, combine
from streamflow.topology import CHECKPOINT_COMPONENT, task_layout
from streamflow.zkstate import ClusterState, new_topology_id, slot_key

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SCHEDULE_SECS = 0.5
DESCRIBE_TIMEOUT_SECS = 60
LOGS_TIMEOUT_SECS = 5.0
READ_ANYWHERE = frozenset({"cluster", "logs"})
CODE_GRACE_SECS = 1.0
"""Seconds between removing a killed topology's assignment and its code: supervisors
stop its workers on the assignment's removal, and a worker starting meanwhile still
finds its code."""
"""Operations a standby answers itself (they read ZooKeeper and supervisors only)."""


SYSTEM_KINDS = {CHECKPOINT_COMPONENT: "checkpoint"}
"""Kinds of the engine's own components other than ackers, as status names them."""


class ApiError(Exception):
    """An API call that cannot be done: the HTTP status and a one-line reason."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class Nimbus:
    def __init__(
        self,
        state: ClusterState,
        host: str,
        port: int,
        token: str | None = None,
        worker_timeout: float = 30.0,
        launch_timeout: float = 120.0,
    ) -> None:
        self.state = state
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self.token = token
        self.worker_timeout = worker_timeout
        self.launch_timeout = launch_timeout
        self._last_beats: dict[str, dict[tuple[str, float], float]] = {}
        """Per topology, the time of the last heartbeat seen from each slot, keyed by slot
        and the time it got its tasks: a worker whose ZooKeeper session ended has no
        heartbeat node, and must count as silent since its last beat, not as launching."""
        self.leading = threading.Event()
        self._stopping = threading.Event()
        self._session_lost = threading.Event()
        self._lock = threading.RLock()
        self.election = state.zk.Election(state.path("nimbus", "leader"), identifier=self.url)
        self.registry = CollectorRegistry()
        self.registry.register(TopologyCollector(self._statuses))
        self.reassignments = Counter("streamflow_reassignments", "Assignments changed for a running topology",
                                     ["topology"], registry=self.registry)
        self.routes: dict[tuple[str, str], Callable[[dict[str, Any], str], Any]] = {
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

    # -- serving ----------------------------------------------------------------------

    def serve(self) -> ThreadingHTTPServer:
        """Start the HTTP API and the election on their own threads; returns the server."""
        try:
            server = ThreadingHTTPServer(("0.0.0.0", self.port), _handler(self))
        except OSError as exc:
            raise StreamflowError(f"nimbus cannot serve on port {self.port}: {exc.strerror}") from None
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="nimbus-http", daemon=True).start()
        self.state.register_nimbus(self.url)
        self.state.zk.add_listener(self._connection_changed)
        threading.Thread(target=self._campaign, name="nimbus-election", daemon=True).start()
        return server

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
            self.state.zk.handler.spawn(self.state.register_nimbus, self.url)
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

    def ready(self) -> tuple[bool, str]:
        """Ready when connected to ZooKeeper and a leader (this nimbus or another) is known."""
        if self.state.zk.state != KazooState.CONNECTED:
            return False, f"ZooKeeper connection {self.state.zk.state}"
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

    def handle(self, method: str, op: str, name: str, body: dict[str, Any], auth: str | None
               ) -> tuple[HTTPStatus, Any]:
        """One API call: authenticate, forward to the leader if need be, dispatch."""
        if self.token is not None and not hmac.compare_digest(auth or "", f"Bearer {self.token}"):
            return HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong API token"}
        route = self.routes.get((method, op))
        if route is None:
            return HTTPStatus.NOT_FOUND, {"error": f"no operation {method} {op}"}
        if not self.leading.is_set() and op not in READ_ANYWHERE:
            return self._forward(method, op, name, body, auth)
        try:
            return HTTPStatus.OK, route(body, name)
        except ApiError as exc:
            return exc.status, {"error": str(exc)}
        except Exception as exc:  # ZooKeeper away, say: a one-line answer, not a dropped connection
            reason = f"{method} {op} failed: {type(exc).__name__}: {exc}"
            log.error("nimbus %s: %s", self.url, reason, exc_info=log.isEnabledFor(logging.DEBUG))
            return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": reason}

    def _forward(self, method: str, op: str, name: str, body: dict[str, Any], auth: str | None
                 ) -> tuple[HTTPStatus, Any]:
        leader = self.leader_url()
        if leader is None or leader == self.url:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no nimbus leader at the moment; retry"}
        path = f"/api/v1/{op}" + (f"/{urllib.parse.quote(name)}" if name else "")
        if method == "GET" and body:
            path += "?" + urllib.parse.urlencode(body)
        request = urllib.request.Request(
            leader + path, method=method, data=json.dumps(body).encode() if method == "POST" else None,
            headers={"Content-Type": "application/json", **({"Authorization": auth} if auth else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return HTTPStatus(response.status), json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return HTTPStatus(exc.code), json.loads(exc.read() or b"{}")
        except OSError as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"cannot reach the leader {leader}: {exc}"}

    # -- operations -------------------------------------------------------------------

    def _find(self, name: str) -> tuple[str, dict[str, Any]]:
        for topology_id in self.state.topology_ids():
            record = self.state.read_topology(topology_id)
            if record is not None and record["name"] == name and record["status"] != "killed":
                return topology_id, record
        raise ApiError(HTTPStatus.NOT_FOUND, f"no topology named {name!r}")

    def submit(self, body: dict[str, Any], _: str) -> Any:
        """Load the code (outside the lock: it may take a minute), then record the
        topology and schedule it, unless one of that name was submitted meanwhile."""
        name = body.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"invalid topology name {name!r} "
                           "(letters, digits, '_', '.', '-'; at most 64)")
        file, config = body.get("file"), body.get("config")
        config = {} if config is None else config
        if not isinstance(file, str) or not isinstance(body.get("package"), str) or not isinstance(config, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST,
                           "submit needs file (text), package (base64) and config (an object)")
        self._refuse_if_running(name)
        workers = body.get("workers")
        if workers is not None:
            config["topology.workers"] = workers
        try:
            package = base64.b64decode(body["package"], validate=True)
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "package is not base64") from None
        description = self._describe(package, file, config)
        topology_id = new_topology_id(name)
        record = {
            "id": topology_id, "name": name, "status": "active", "file": file,
            "config": config, "workers": description["config"]["topology.workers"],
            "parallelism": {}, "description": description, "secret": secrets.token_hex(16),
            "submitted": time.time(),
        }
        with self._lock:
            self._refuse_if_running(name)
            self.state.write_code(topology_id, package)
            self.state.write_topology(topology_id, record)
            self.schedule_all()
        log.info("nimbus: submitted %s as %s", name, topology_id)
        return {"id": topology_id, "name": name}

    def _refuse_if_running(self, name: str) -> None:
        try:
            self._find(name)
        except ApiError:
            return
        raise ApiError(HTTPStatus.CONFLICT, f"a topology named {name!r} is already running")

    def _describe(self, package: bytes, file: str, config: dict[str, Any]) -> dict[str, Any]:
        """Load the submitted code in a child process (user code never runs in nimbus)
        and return its description, or refuse it with the same one line as the CLI."""
        with tempfile.TemporaryDirectory(prefix="streamflow-submit-") as tmp:
            try:
                unpack(package, Path(tmp))
            except (zipfile.BadZipFile, StreamflowError, OSError) as exc:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"package cannot be unpacked: {exc}") from None
            args = [x for k, v in config.items() for x in ("-c", f"{k}={json.dumps(v)}")]
            try:
                result = subprocess.run(
                    [sys.executable, "-m", "streamflow.cli", "describe", str(Path(tmp) / file), *args],
                    capture_output=True, text=True, timeout=DESCRIBE_TIMEOUT_SECS, cwd=tmp,
                )
            except subprocess.TimeoutExpired:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"loading {file} took over "
                               f"{DESCRIBE_TIMEOUT_SECS} s") from None
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["cannot load the topology"])[-1]
            raise ApiError(HTTPStatus.BAD_REQUEST, reason.removeprefix("streamflow: error: "))
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def list(self, body: dict[str, Any], _: str) -> Any:
        topologies = []
        for topology_id in self.state.topology_ids():
            record = self.state.read_topology(topology_id)
            if record is None:
                continue
            assignment = self.state.read_assignment(topology_id) or {}
            topologies.append({
                "name": record["name"], "id": topology_id, "status": record["status"],
                "workers": len(assignment.get("workers", {})),
                "tasks": sum(len(t) for t in record["description"]["tasks"].values()),
                "uptime": time.time() - record["submitted"],
            })
        return {"topologies": topologies}

    def status(self, body: dict[str, Any], name: str) -> Any:
        topology_id, record = self._find(name)
        assignment = self.state.read_assignment(topology_id) or {}
        beats = self.state.heartbeats(topology_id)
        layout = self._layout(record)
        specs = record["description"]["components"]
        reports: dict[str, list[Report]] = {c: [] for c, tasks in layout.items() if tasks}
        workers = []
        now = time.time()
        for key, w in sorted(assignment.get("workers", {}).items()):
            beat = beats.get(key)
            for report in (beat or {}).get("stats", []):
                if report["component"] in reports:
                    reports[report["component"]].append(report)
            workers.append({
                "slot": key, "host": w["host"], "port": w["port"], "tasks": w["tasks"],
                "alive": beat is not None and now - beat["time"] < self.worker_timeout,
                "heartbeat": beat["time"] if beat else None,
                "uptime": now - beat["started"] if beat else None,
                "pid": beat["pid"] if beat else None,
                "dropped": beat.get("dropped", 0) if beat else None,
            })
        errors = self.state.errors(topology_id)
        components = {}
        for c, tasks in reports.items():
            spec = specs.get(c, {"kind": SYSTEM_KINDS.get(c, "acker"), "inputs": []})
            view = combine(spec["kind"], tasks)
            last = errors[c][-1] if errors.get(c) else None
            components[c] = {"tasks": len(layout[c]), "inputs": spec["inputs"], **view, "last_error": last}
        return {
            "name": record["name"], "id": topology_id, "status": record["status"],
            "uptime": now - record["submitted"], "log_level": record.get("log_level", "INFO"),
            "workers": workers, "components": components, "errors": errors,
        }

    def _statuses(self) -> Sequence[dict[str, Any]]:
        """``status`` of every running topology, for /metrics."""
        statuses = []
        for topology_id in self.state.topology_ids():
            record = self.state.read_topology(topology_id)
            if record is not None and record["status"] != "killed":
                try:
                    statuses.append(self.status({}, record["name"]))
                except ApiError:
                    continue  # killed meanwhile
        return statuses

    def _set_status(self, name: str, status: str) -> dict[str, Any]:
        with self._lock:
            topology_id, record = self._find(name)
            record["status"] = status
            self.state.write_topology(topology_id, record)
        return {"id": topology_id, "status": status}

    def activate(self, body: dict[str, Any], name: str) -> Any:
        return self._set_status(name, "active")

    def deactivate(self, body: dict[str, Any], name: str) -> Any:
        return self._set_status(name, "inactive")

    def kill(self, body: dict[str, Any], name: str) -> Any:
        """Deactivate, let in-flight tuples finish for ``wait`` seconds (default: the
        message timeout), then stop the workers and forget the topology. The time to
        remove it is kept in its record, not in this process: the leader's scheduling
        pass removes it (:meth:`_remove_killed`), whichever nimbus leads by then."""
        with self._lock:
            topology_id, record = self._find(name)
            wait = body.get("wait")
            if wait is None:
                wait = record["description"]["config"].get("topology.message.timeout.secs", 30)
            if not isinstance(wait, (int, float)) or wait < 0:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"wait must be a number of seconds >= 0, got {wait!r}")
            record["status"] = "killed"
            record["remove_at"] = time.time() + wait
            self.state.write_topology(topology_id, record)
        return {"id": topology_id, "status": "killed", "wait": wait}

    def _remove_killed(self, topology_id: str, record: dict[str, Any], assignment: dict[str, Any] | None) -> None:
        """A killed topology past its wait: its assignment goes first (supervisors stop
        its workers), its code and records :data:`CODE_GRACE_SECS` later. Each step is
        done again on the next pass if it failed."""
        now = time.time()
        if now < record.get("remove_at", 0.0):
            return
        if assignment is not None or "unassigned_at" not in record:
            if assignment is not None:
                self.state.delete_assignment(topology_id)
            record["unassigned_at"] = now
            self.state.write_topology(topology_id, record)
        elif now >= record["unassigned_at"] + CODE_GRACE_SECS:
            self.state.delete_topology(topology_id)
            self._last_beats.pop(topology_id, None)
            log.info("nimbus: removed %s", topology_id)

    def rebalance(self, body: dict[str, Any], name: str) -> Any:
        with self._lock:
            return self._rebalance(body, name)

    def _rebalance(self, body: dict[str, Any], name: str) -> Any:
        topology_id, record = self._find(name)
        workers = body.get("workers")
        parallelism = body.get("parallelism") or {}
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"workers must be an integer >= 1, got {workers!r}")
        if not isinstance(parallelism, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "parallelism must be an object of component: tasks")
        components = record["description"]["components"]
        for component, n in parallelism.items():
            if component not in components:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"topology {name!r} has no component {component!r}")
            if not isinstance(n, int) or n < 1:
                raise ApiError(HTTPStatus.BAD_REQUEST,
                               f"component {component!r}: parallelism must be an integer >= 1, got {n!r}")
        _check_state_rebalance(name, record, parallelism)
        if workers is not None:
            record["workers"] = workers
            record["config"]["topology.workers"] = workers
        record["parallelism"].update(parallelism)
        self.state.write_topology(topology_id, record)
        self.schedule_all()
        return {"id": topology_id, "workers": record["workers"], "parallelism": record["parallelism"]}

    def set_config(self, body: dict[str, Any], name: str) -> Any:
        """Change config keys of a running topology; spouts apply what they can at once
        (``Spout.reconfigure``), such as Kafka client quotas."""
        changes = body.get("config")
        if not isinstance(changes, dict) or not changes:
            raise ApiError(HTTPStatus.BAD_REQUEST, "config must be a non-empty object")
        with self._lock:
            topology_id, record = self._find(name)
            try:
                validate_config({**record["config"], **changes})
            except StreamflowError as exc:
                raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from None
            record["config"].update(changes)
            self.state.write_topology(topology_id, record)
        return {"id": topology_id, "config": record["config"]}

    def set_log_level(self, body: dict[str, Any], name: str) -> Any:
        """Set the log level of every worker of a topology (they follow it at once)."""
        level = str(body.get("level", "")).upper()
        if level not in LEVELS:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"level must be one of {', '.join(LEVELS)}, "
                           f"got {body.get('level')!r}")
        with self._lock:
            topology_id, record = self._find(name)
            record["log_level"] = level
            self.state.write_topology(topology_id, record)
        return {"id": topology_id, "log_level": level}

    def logs(self, body: dict[str, Any], name: str) -> Any:
        """New log lines of a topology's workers, read from their supervisors and merged
        by time. ``component`` keeps that component's lines; ``cursor`` (the JSON of a
        previous answer's cursor) returns only lines written since."""
        topology_id, record = self._find(name)
        try:
            cursor = json.loads(body.get("cursor") or "{}")
        except ValueError:
            cursor = None
        if not isinstance(cursor, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "cursor must be the cursor of an earlier answer")
        component = body.get("component")
        supervisors = self.state.supervisors()
        assignment = self.state.read_assignment(topology_id) or {}
        timed: list[tuple[float, dict[str, Any]]] = []
        next_cursor, unreachable = {}, []
        for slot, w in sorted(assignment.get("workers", {}).items()):
            url = supervisors.get(w["supervisor"], {}).get("logs_url")
            query = {"topology": topology_id, "port": w["port"]}
            if isinstance(cursor.get(slot), int):
                query["offset"] = cursor[slot]
            try:
                if url is None:
                    raise OSError("its supervisor serves no logs (--health-port 0)")
                answer = _get_json(f"{url}/logs?{urllib.parse.urlencode(query)}", record["secret"])
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
        supervisors = self.state.supervisors()
        used: dict[str, int] = {}
        for assignment in self.state.assignments().values():
            for w in assignment.get("workers", {}).values():
                used[w["supervisor"]] = used.get(w["supervisor"], 0) + 1
        topologies = []
        for status in self._statuses():
            spouts = [c for c in status["components"].values() if c["kind"] == "spout"]
            topologies.append({
                "name": status["name"], "id": status["id"], "status": status["status"],
                "uptime": status["uptime"], "workers": len(status["workers"]),
                "tasks": sum(c["tasks"] for c in status["components"].values()),
                "rate": round(sum(c["rate"] for c in spouts), 1),
            })
        return {
            "leader": self.leader_url(), "nimbus": self.state.nimbus_urls(),
            "supervisors": [
                {"id": sid, "host": info["host"], "slots": len(info["ports"]),
                 "used": used.get(sid, 0)} for sid, info in sorted(supervisors.items())
            ],
            "topologies": topologies,
        }

    # -- scheduling (leader only) -----------------------------------------------------

    @staticmethod
    def _layout(record: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        components = record["description"]["components"]
        parallelism = {c: record["parallelism"].get(c, spec["parallelism"]) for c, spec in components.items()}
        ackers = record["config"].get("topology.acker.executors")
        if ackers is None:
            ackers = record["description"]["config"].get("topology.acker.executors")
        stateful = any(spec.get("stateful") for spec in components.values())
        return task_layout(parallelism, record["workers"] if ackers is None else ackers, stateful)

    def schedule_all(self) -> None:
        """Bring every topology's assignment in line with live supervisors and workers."""
        with self._lock:
            supervisors = self.state.supervisors()
            assignments = self.state.assignments()
            taken: dict[str, set[int]] = {}
            for a in assignments.values():
                for w in a.get("workers", {}).values():
                    taken.setdefault(w["supervisor"], set()).add(w["port"])
            for topology_id in self.state.topology_ids():
                record = self.state.read_topology(topology_id)
                if record is None:
                    continue
                if record["status"] == "killed":
                    self._remove_killed(topology_id, record, assignments.get(topology_id))
                else:
                    self._schedule(topology_id, record, supervisors, assignments.get(topology_id), taken)

    def _schedule(self, topology_id: str, record: dict[str, Any], supervisors: dict[str, Any],
                  assignment: dict[str, Any] | None, taken: dict[str, set[int]]) -> None:
        now = time.time()
        workers = (assignment or {}).get("workers", {})
        current: dict[Slot, list[int]] = {(w["supervisor"], w["port"]): w["tasks"] for w in workers.values()}
        beats = self.state.heartbeats(topology_id) if workers else {}
        remembered, last_beats = self._last_beats.get(topology_id, {}), {}
        alive = set()
        for (sup, port), _ in current.items():
            key = slot_key(sup, port)
            since = workers[key]["since"]
            beat = beats.get(key)
            last = beat["time"] if beat is not None else remembered.get((key, since))
            if last is not None:
                last_beats[(key, since)] = last
            fresh = last is not None and now - last < self.worker_timeout
            launching = last is None and now - since < self.launch_timeout
            if sup in supervisors and (fresh or launching):
                alive.add((sup, port))
        self._last_beats[topology_id] = last_beats
        free = {
            sid: [p for p in info["ports"] if p not in taken.get(sid, set())]
            for sid, info in supervisors.items()
        }
        tasks = [t for ts in self._layout(record).values() for t in ts]
        new = schedule(tasks, record["workers"], free, current, alive)
        if new == current:
            return
        for sup, port in current:  # this topology's old slots are free unless kept below
            taken.get(sup, set()).discard(port)
        new_workers = {}
        for (sup, port), slot_tasks in new.items():
            key = slot_key(sup, port)
            old = workers.get(key)
            since = old["since"] if old and sorted(old["tasks"]) == sorted(slot_tasks) else now
            new_workers[key] = {"supervisor": sup, "host": supervisors[sup]["host"], "port": port,
                                "tasks": sorted(slot_tasks), "since": since}
            taken.setdefault(sup, set()).add(port)
        if assignment is not None:
            self.reassignments.labels(record["name"]).inc()
        version = (assignment or {}).get("version", 0) + 1
        self.state.write_assignment(topology_id, {"version": version, "workers": new_workers})
        log.info("nimbus: assigned %s (version %d) to %s", topology_id, version, sorted(new_workers))


def _check_state_rebalance(name: str, record: dict[str, Any], parallelism: dict[str, int]) -> None:
    """A rebalance restarts workers: refuse one that would lose state kept in their memory,
    or give a stateful component more tasks than its key groups."""
    components = record["description"]["components"]
    stateful = sorted(c for c, spec in components.items() if spec.get("stateful"))
    if not stateful:
        return
    config = {**record["description"]["config"], **record["config"]}
    if config.get("topology.state.provider", "memory") == "memory":
        raise ApiError(HTTPStatus.BAD_REQUEST,
                       f"topology {name!r} keeps the state of {', '.join(stateful)} in its workers' memory "
                       "(topology.state.provider=memory), which a rebalance would lose: submit it with "
                       "a durable provider (-c topology.state.provider=redis)")
    groups = config.get("topology.state.key.groups", 128)
    for component, n in parallelism.items():
        if component in stateful and n > groups:
            raise ApiError(HTTPStatus.BAD_REQUEST,
                           f"component {component!r}: parallelism {n} exceeds its {groups} key groups "
                           "(topology.state.key.groups)")


def _handler(nimbus: Nimbus) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "streamflow-nimbus"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http %s", format % args)

        def _serve(self, method: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            if method == "GET" and url.path == "/metrics":
                return self._send(HTTPStatus.OK, PROMETHEUS_TEXT, exposition(nimbus.registry))
            answer = probe(url.path, nimbus.ready)
            if answer is not None:
                return self._reply(*answer)
            parts = [p for p in url.path.split("/") if p]
            if parts[:2] != ["api", "v1"]:
                page = webui.page(url.path) if method == "GET" else None
                if page is None:
                    return self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such path {url.path}"})
                return self._send(HTTPStatus.OK, *page)
            if len(parts) < 3:
                return self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such path {url.path}"})
            op, name = parts[2], urllib.parse.unquote("/".join(parts[3:]))
            body: dict[str, Any] = dict(urllib.parse.parse_qsl(url.query)) if method == "GET" else {}
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    body = json.loads(self.rfile.read(length))
            except ValueError:
                return self._reply(HTTPStatus.BAD_REQUEST, {"error": "the body is not JSON"})
            if not isinstance(body, dict):
                return self._reply(HTTPStatus.BAD_REQUEST, {"error": "the body is not a JSON object"})
            status, answer = nimbus.handle(method, op, name, body, self.headers.get("Authorization"))
            self._reply(status, answer)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _reply(self, status: HTTPStatus, answer: Any) -> None:
            self._send(status, "application/json", json.dumps(answer).encode())

        def _send(self, status: HTTPStatus, content_type: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _get_json(url: str, token: str) -> Any:
    """GET a JSON answer with a bearer token; raises OSError (unreachable, refused) or
    ValueError (not JSON)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=LOGS_TIMEOUT_SECS) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise OSError(f"{url.split('?')[0]} answered {exc.code}: {exc.read()[:200]!r}") from None


def read_token(path: str | None) -> str | None:
    """The API token from ``--token-file`` (first line, stripped)."""
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise StreamflowError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise StreamflowError(f"token file {path} is empty")
    return token

