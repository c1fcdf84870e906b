"""The cluster's shared state in ZooKeeper, and the only module that knows its layout.

Under a configurable root (default ``/streamflow``)::

    nimbus/leader/...            leader election (kazoo's Election recipe)
    nimbus/hosts/<url>           ephemeral: every running nimbus, for forwarding
    supervisors/<id>             ephemeral: {host, ports}
    topologies/<id>              {name, status, description, config, workers, ...}
    code/<id>/<chunk>            the submitted code package, in chunks under 1 MB
    assignments/<id>             {version, workers: {"<supervisor>:<port>": {host, port, tasks}}}
    workerbeats/<id>/<sup:port>  ephemeral: a worker's heartbeat with its task counters
    errors/<id>/<component>      the component's last errors, bounded

Values are JSON. With ``auth="user:password"`` every znode streamflow creates carries a
digest ACL for that identity only, so other ZooKeeper clients cannot alter assignments.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import orjson
from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import make_digest_acl

from streamflow.errors import StreamflowError

log = logging.getLogger(__name__)

CODE_CHUNK = 512 * 1024
ERRORS_KEPT = 10


def new_topology_id(name: str) -> str:
    """A submission's id: its name and the submission time, so that a topology killed and
    submitted again under the same name gets a new id (and new znodes)."""
    return f"{name}-{int(time.time() * 1000)}"


def topology_name(topology_id: str) -> str:
    """The name a topology was submitted under, from its id: what metrics are labelled by,
    so that a supervisor's series join nimbus's."""
    return topology_id.rsplit("-", 1)[0]


class ZooKeeperUnreachable(StreamflowError):
    """ZooKeeper did not answer in time."""


def slot_key(supervisor: str, port: int) -> str:
    """The name of a worker slot in assignments and heartbeats: ``supervisor:port``."""
    return f"{supervisor}:{port}"


class ClusterState:
    """A kazoo client bound to streamflow's root, with typed reads and writes."""

    def __init__(
        self,
        hosts: str,
        root: str = "/streamflow",
        auth: str | None = None,
        session_timeout: float = 10.0,
    ) -> None:
        self.hosts = hosts
        self.root = "/" + root.strip("/")
        acl, auth_data = None, None
        if auth:
            user, sep, password = auth.partition(":")
            if not sep or not user:
                raise StreamflowError(f"malformed ZooKeeper auth {auth!r}: expected user:password")
            acl = [make_digest_acl(user, password, all=True)]
            auth_data = [("digest", auth)]
        self.zk = KazooClient(
            hosts=hosts,
            timeout=session_timeout,
            default_acl=acl,
            auth_data=auth_data,
            connection_retry={"max_tries": -1, "delay": 0.2, "max_delay": 2},
            command_retry={"max_tries": 3, "delay": 0.2, "max_delay": 1},
        )

    def start(self, timeout: float = 10.0) -> None:
        """Connect, or raise :class:`ZooKeeperUnreachable` after ``timeout`` seconds."""
        try:
            self.zk.start(timeout=timeout)
        except KazooTimeoutError:
            self.zk.stop()
            raise ZooKeeperUnreachable(
                f"cannot reach ZooKeeper at {self.hosts} within {timeout:g} s"
            ) from None
        for part in ("nimbus/hosts", "supervisors", "topologies", "code", "assignments",
                     "workerbeats", "errors"):
            self.zk.ensure_path(self.path(part))

    def stop(self) -> None:
        self.zk.stop()
        self.zk.close()

    def path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # -- plain JSON nodes -------------------------------------------------------------

    def _read(self, path: str, watch: Callable[..., Any] | None = None) -> Any:
        try:
            data, _ = self.zk.get(path, watch=watch)
        except NoNodeError:
            return None
        return orjson.loads(data) if data else None

    def _write(self, path: str, value: Any, ephemeral: bool = False) -> None:
        data = orjson.dumps(value)
        try:
            self.zk.set(path, data)
        except NoNodeError:
            try:
                self.zk.create(path, data, ephemeral=ephemeral, makepath=True)
            except NodeExistsError:
                self.zk.set(path, data)

    def _children(self, path: str) -> list[str]:
        try:
            return sorted(self.zk.get_children(path))
        except NoNodeError:
            return []

    # -- nimbus -----------------------------------------------------------------------

    def register_nimbus(self, url: str) -> None:
        self._write(self.path("nimbus", "hosts", url.replace("/", "|")), {"url": url}, ephemeral=True)

    def nimbus_urls(self) -> list[str]:
        return [name.replace("|", "/") for name in self._children(self.path("nimbus", "hosts"))]

    # -- supervisors ------------------------------------------------------------------

    def register_supervisor(self, supervisor: str, info: dict[str, Any]) -> None:
        self._write(self.path("supervisors", supervisor), info, ephemeral=True)

    def deregister_supervisor(self, supervisor: str) -> None:
        try:
            self.zk.delete(self.path("supervisors", supervisor))
        except NoNodeError:
            pass

    def supervisors(self) -> dict[str, dict[str, Any]]:
        found = {}
        for sup in self._children(self.path("supervisors")):
            info = self._read(self.path("supervisors", sup))
            if info is not None:
                found[sup] = info
        return found

    # -- topologies and their code ----------------------------------------------------

    def topology_ids(self) -> list[str]:
        return self._children(self.path("topologies"))

    def read_topology(self, topology: str, watch: Callable[..., Any] | None = None) -> dict[str, Any] | None:
        return self._read(self.path("topologies", topology), watch)  # type: ignore[no-any-return]

    def write_topology(self, topology: str, record: dict[str, Any]) -> None:
        self._write(self.path("topologies", topology), record)

    def write_code(self, topology: str, package: bytes) -> None:
        base = self.path("code", topology)
        self.zk.ensure_path(base)
        for i in range(0, max(len(package), 1), CODE_CHUNK):
            self.zk.create(f"{base}/{i // CODE_CHUNK:06d}", package[i : i + CODE_CHUNK])

    def read_code(self, topology: str) -> bytes:
        base = self.path("code", topology)
        return b"".join(self.zk.get(f"{base}/{chunk}")[0] for chunk in self._children(base))

    def delete_topology(self, topology: str) -> None:
        """Remove everything about a killed topology."""
        for part in ("assignments", "workerbeats", "errors", "code", "topologies"):
            try:
                self.zk.delete(self.path(part, topology), recursive=True)
            except NoNodeError:
                pass

    # -- assignments ------------------------------------------------------------------

    def read_assignment(self, topology: str, watch: Callable[..., Any] | None = None) -> dict[str, Any] | None:
        return self._read(self.path("assignments", topology), watch)  # type: ignore[no-any-return]

    def write_assignment(self, topology: str, assignment: dict[str, Any]) -> None:
        self._write(self.path("assignments", topology), assignment)

    def delete_assignment(self, topology: str) -> None:
        try:
            self.zk.delete(self.path("assignments", topology))
        except NoNodeError:
            pass

    def assignments(self) -> dict[str, dict[str, Any]]:
        found = {}
        for topology in self._children(self.path("assignments")):
            assignment = self.read_assignment(topology)
            if assignment is not None:
                found[topology] = assignment
        return found

    # -- heartbeats and errors --------------------------------------------------------

    def write_heartbeat(self, topology: str, slot: str, beat: dict[str, Any]) -> None:
        self._write(self.path("workerbeats", topology, slot), beat, ephemeral=True)

    def heartbeats(self, topology: str) -> dict[str, dict[str, Any]]:
        base = self.path("workerbeats", topology)
        found = {}
        for slot in self._children(base):
            beat = self._read(f"{base}/{slot}")
            if beat is not None:
                found[slot] = beat
        return found

    def record_error(self, topology: str, component: str, error: dict[str, Any]) -> None:
        """Keep ``error`` among the component's last :data:`ERRORS_KEPT` errors."""
        path = self.path("errors", topology, component)
        errors = (self._read(path) or [])[-(ERRORS_KEPT - 1):] + [error]
        self._write(path, errors)

    def errors(self, topology: str) -> dict[str, list[dict[str, Any]]]:
        base = self.path("errors", topology)
        return {c: self._read(f"{base}/{c}") or [] for c in self._children(base)}
