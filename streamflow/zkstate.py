"""The cluster's shared state in ZooKeeper, and the only module that knows its layout.

Under a configurable root (default ``/streamflow``)::

    nimbus/leader/...            leader election (kazoo's Election recipe)
    nimbus/hosts/<url>           ephemeral: every running nimbus, for forwarding
    supervisors/<id>             ephemeral: {host, ports}
    topologies/<id>              {name, status, description, config, workers, ...}
    code/<id>/<chunk>            the submitted code package, in chunks under 1 MB
    assignments/<id>             {version, workers: {"<supervisor>:<port>": {host, port, tasks, since}}}
    workerbeats/<id>/<sup:port>  ephemeral: a worker's heartbeat with its task counters
    errors/<id>/<component>      the component's last errors, bounded

``workerbeats/<id>`` and ``errors/<id>`` are created with the topology's record, never by
a heartbeat or an error record, so that a worker writing after :meth:`ClusterState.delete_topology`
cannot bring them back.

Values are JSON; topology records and assignments are read and written as the typed
records of :mod:`streamflow.records`. The roles never build a path or touch the kazoo
client themselves: the reads, writes, watches (:meth:`ClusterState.watch_assignments`,
:meth:`ClusterState.watch_topology`, ...) and the leader election
(:meth:`ClusterState.election`) are all here. With ``auth="user:password"`` every znode
streamflow creates carries a digest ACL for that identity only, so other ZooKeeper
clients cannot alter assignments.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, TypeVar

import orjson
from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState
from kazoo.recipe.election import Election
from kazoo.security import make_digest_acl

from streamflow.errors import StreamflowError, refuse_placeholder
from streamflow.records import Assignment, RecordError, TopologyRecord

log = logging.getLogger(__name__)
Record = TypeVar("Record", TopologyRecord, Assignment)

CODE_CHUNK = 512 * 1024
ERRORS_KEPT = 10
ERROR_MESSAGE_CHARS = 1024
"""How much of an error message is kept: one quoting a large record would push the
component's node toward ZooKeeper's 1 MB limit, past which every write to it drops the
connection."""
DELETE_TRIES = 10
"""Times a topology's subtree is deleted again when a worker added a child meanwhile."""


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


class JsonNodes:
    """JSON values in znodes, over one kazoo client: what :class:`ClusterState` reads and
    writes every node of its layout with."""

    def __init__(self, zk: KazooClient) -> None:
        self.zk = zk

    def read(self, path: str) -> Any:
        try:
            data, _ = self.zk.get(path)
        except NoNodeError:
            return None
        return orjson.loads(data) if data else None

    def write(self, path: str, value: Any) -> None:
        data = orjson.dumps(value)
        try:
            self.zk.set(path, data)
        except NoNodeError:
            try:
                self.zk.create(path, data, makepath=True)
            except NodeExistsError:
                self.zk.set(path, data)

    def write_ephemeral(self, path: str, value: Any) -> None:
        """Write an ephemeral node that this client's session owns. The node may be one an
        earlier session left (a process restarted within its session timeout): a plain set
        would succeed on it, and ZooKeeper would delete it, never to come back, when that
        session ends; so it is replaced. Raises :class:`NoNodeError` if the parent is gone."""
        data = orjson.dumps(value)
        try:
            stat = self.zk.set(path, data)
        except NoNodeError:
            self.zk.create(path, data, ephemeral=True)
            return
        if stat.ephemeralOwner != self.session_id():
            self.delete(path)
            self.zk.create(path, data, ephemeral=True)

    def owned(self, path: str) -> bool:
        """Whether ``path`` is an ephemeral node of this client's current session."""
        stat = self.zk.exists(path)
        return stat is not None and stat.ephemeralOwner == self.session_id()

    def session_id(self) -> int | None:
        client_id = self.zk.client_id  # None while not connected
        return client_id[0] if client_id else None

    def delete(self, path: str) -> None:
        try:
            self.zk.delete(path)
        except NoNodeError:
            pass

    def delete_tree(self, path: str) -> None:
        """Delete ``path`` and everything under it. kazoo deletes the children first, and a
        worker may add one meanwhile (its last heartbeat), which fails the parent's deletion
        with :class:`NotEmptyError`: then delete again."""
        for attempt in range(1, DELETE_TRIES + 1):
            try:
                self.zk.delete(path, recursive=True)
                return
            except NotEmptyError:
                if attempt == DELETE_TRIES:
                    raise

    def children(self, path: str) -> list[str]:
        try:
            return sorted(self.zk.get_children(path))
        except NoNodeError:
            return []


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
        self.session_timeout = session_timeout
        acl, auth_data = None, None
        if auth:
            user, sep, password = auth.partition(":")
            if not sep or not user:  # the value is a password: it is not echoed
                raise StreamflowError("malformed ZooKeeper auth: expected user:password")
            refuse_placeholder(auth, "the ZooKeeper auth (--zk-auth)")
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
        self.nodes = JsonNodes(self.zk)

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

    # -- the connection ---------------------------------------------------------------

    @property
    def connection(self) -> str:
        """The connection's state: ``CONNECTED``, ``SUSPENDED`` or ``LOST``."""
        return str(self.zk.state)

    @property
    def connected(self) -> bool:
        return self.zk.state == KazooState.CONNECTED

    def on_connection_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(state)`` on kazoo's thread at every change of the connection's
        state (``CONNECTED``, ``SUSPENDED``, ``LOST``). It must not block: work that talks
        to ZooKeeper goes through :meth:`spawn`."""
        self.zk.add_listener(listener)

    def spawn(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` on a thread of kazoo's handler (from a listener)."""
        self.zk.handler.spawn(function, *args)

    def election(self, identifier: str) -> Election:
        """The nimbus leader election (kazoo's recipe): ``run(func)`` blocks until this
        contender leads, then runs ``func`` while it holds the lock; ``contenders()`` lists
        the identifiers in line, the leader first."""
        return self.zk.Election(self.path("nimbus", "leader"), identifier=identifier)

    # -- nimbus -----------------------------------------------------------------------

    def register_nimbus(self, url: str) -> None:
        self.nodes.write_ephemeral(self.path("nimbus", "hosts", url.replace("/", "|")), {"url": url})

    def nimbus_urls(self) -> list[str]:
        return [name.replace("|", "/") for name in self.nodes.children(self.path("nimbus", "hosts"))]

    # -- supervisors ------------------------------------------------------------------

    def register_supervisor(self, supervisor: str, info: dict[str, Any]) -> None:
        self.nodes.write_ephemeral(self.path("supervisors", supervisor), info)

    def supervisor_registered(self, supervisor: str) -> bool:
        """Whether the supervisor's node is there and this session's: not when the
        session that wrote it has expired, nor when an earlier process wrote it."""
        return self.nodes.owned(self.path("supervisors", supervisor))

    def deregister_supervisor(self, supervisor: str) -> None:
        self.nodes.delete(self.path("supervisors", supervisor))

    def supervisors(self) -> dict[str, dict[str, Any]]:
        found = {}
        for sup in self.nodes.children(self.path("supervisors")):
            info = self.nodes.read(self.path("supervisors", sup))
            if info is not None:
                found[sup] = info
        return found

    # -- topologies and their code ----------------------------------------------------

    def topology_ids(self) -> list[str]:
        return self.nodes.children(self.path("topologies"))

    def read_topology(self, topology: str) -> TopologyRecord | None:
        """The topology's record, None if there is none. Raises :class:`RecordError` for a
        record that is not one."""
        return self._record("topologies", topology, TopologyRecord.from_json)

    def topologies(self) -> dict[str, TopologyRecord]:
        """Every topology's record, by id; one that cannot be read is logged and left out,
        so that it keeps no other from being listed or scheduled."""
        return self._records("topologies", TopologyRecord.from_json)

    def write_topology(self, record: TopologyRecord) -> None:
        """Write a topology's record; a new topology gets its ``workerbeats`` and ``errors``
        nodes here, at submission, as heartbeats and error records never create them."""
        path = self.path("topologies", record.id)
        if self.zk.exists(path) is None:
            for part in ("workerbeats", "errors"):
                self.zk.ensure_path(self.path(part, record.id))
        self.nodes.write(path, record.to_json())

    def watch_topology(self, topology: str, callback: Callable[[TopologyRecord | None], None]) -> None:
        """Call ``callback`` (on kazoo's thread) with the topology's record now and at every
        change; None once it is gone or unreadable."""
        self._watch_record("topologies", topology, TopologyRecord.from_json, callback)

    def write_code(self, topology: str, package: bytes) -> None:
        base = self.path("code", topology)
        self.zk.ensure_path(base)
        for i in range(0, max(len(package), 1), CODE_CHUNK):
            self.zk.create(f"{base}/{i // CODE_CHUNK:06d}", package[i : i + CODE_CHUNK])

    def read_code(self, topology: str) -> bytes:
        base = self.path("code", topology)
        return b"".join(self.zk.get(f"{base}/{chunk}")[0] for chunk in self.nodes.children(base))

    def delete_topology(self, topology: str) -> None:
        """Remove everything about a killed topology."""
        for part in ("assignments", "workerbeats", "errors", "code", "topologies"):
            self.nodes.delete_tree(self.path(part, topology))

    # -- assignments ------------------------------------------------------------------

    def read_assignment(self, topology: str) -> Assignment | None:
        """The topology's assignment, None if there is none. Raises :class:`RecordError`
        for one that is not an assignment."""
        return self._record("assignments", topology, Assignment.from_json)

    def write_assignment(self, topology: str, assignment: Assignment) -> None:
        self.nodes.write(self.path("assignments", topology), assignment.to_json())

    def delete_assignment(self, topology: str) -> None:
        self.nodes.delete(self.path("assignments", topology))

    def assignments(self) -> dict[str, Assignment]:
        """Every topology's assignment, by id; one that cannot be read is logged and left out."""
        return self._records("assignments", Assignment.from_json)

    def watch_assignment(self, topology: str, callback: Callable[[Assignment | None], None]) -> None:
        """Call ``callback`` (on kazoo's thread) with the topology's assignment now and at
        every change; None once it is gone or unreadable."""
        self._watch_record("assignments", topology, Assignment.from_json, callback)

    def watch_assignments(self, changed: Callable[[], bool]) -> None:
        """Call ``changed()`` (on kazoo's thread) whenever an assignment is added, changed
        or removed; the watches end once it returns False."""
        watched: set[str] = set()

        def one_changed(data: bytes | None, stat: Any) -> bool:
            return changed() and data is not None

        def children_changed(children: list[str]) -> bool:
            watched.intersection_update(children)  # a gone one's DataWatch ended with it
            for topology in set(children) - watched:
                watched.add(topology)
                self.zk.DataWatch(self.path("assignments", topology), one_changed)
            return changed()

        self.zk.ChildrenWatch(self.path("assignments"), children_changed)

    # -- typed records: topologies/<id> and assignments/<id> -----------------------------

    def _record(self, part: str, topology: str, decode: Callable[[str, Any], Record]) -> Record | None:
        data = self.nodes.read(self.path(part, topology))
        return None if data is None else decode(topology, data)

    def _records(self, part: str, decode: Callable[[str, Any], Record]) -> dict[str, Record]:
        found = {}
        for topology in self.nodes.children(self.path(part)):
            try:
                record = self._record(part, topology, decode)
            except RecordError as exc:
                log.error("skipping a malformed record: %s", exc)
                continue
            if record is not None:
                found[topology] = record
        return found

    def _watch_record(self, part: str, topology: str, decode: Callable[[str, Any], Record],
                      callback: Callable[[Record | None], None]) -> None:
        def changed(data: bytes | None, stat: Any) -> None:
            try:
                record = decode(topology, orjson.loads(data)) if data else None
            except (RecordError, orjson.JSONDecodeError) as exc:
                log.error("ignoring a malformed record: %s", exc)
                record = None
            callback(record)

        self.zk.DataWatch(self.path(part, topology), changed)

    # -- heartbeats and errors --------------------------------------------------------

    def write_heartbeat(self, topology: str, slot: str, beat: dict[str, Any]) -> None:
        """Write a worker's heartbeat; none once its topology is removed."""
        try:
            self.nodes.write_ephemeral(self.path("workerbeats", topology, slot), beat)
        except NoNodeError:
            pass

    def heartbeats(self, topology: str) -> dict[str, dict[str, Any]]:
        base = self.path("workerbeats", topology)
        found = {}
        for slot in self.nodes.children(base):
            beat = self.nodes.read(f"{base}/{slot}")
            if beat is not None:
                found[slot] = beat
        return found

    def record_error(self, topology: str, component: str, error: dict[str, Any]) -> None:
        """Keep ``error`` among the component's last :data:`ERRORS_KEPT` errors, its message
        cut to :data:`ERROR_MESSAGE_CHARS`; none once the topology is removed. Workers
        report at once: the list is written back only over the version it was read at,
        else read again, so that no report overwrites another."""
        path = self.path("errors", topology, component)
        error = {**error, "message": _capped(error["message"])}
        while True:
            try:
                data, stat = self.zk.get(path)
            except NoNodeError:
                try:
                    self.zk.create(path, orjson.dumps([error]))
                except NodeExistsError:
                    continue  # another worker's first error came first
                except NoNodeError:
                    pass  # the topology was removed
                return
            errors = orjson.loads(data)[-(ERRORS_KEPT - 1):] + [error]
            try:
                self.zk.set(path, orjson.dumps(errors), version=stat.version)
                return
            except (BadVersionError, NoNodeError):
                continue  # changed or removed since it was read

    def errors(self, topology: str) -> dict[str, list[dict[str, Any]]]:
        base = self.path("errors", topology)
        return {c: self.nodes.read(f"{base}/{c}") or [] for c in self.nodes.children(base)}


def _capped(message: str) -> str:
    """``message``, or its first :data:`ERROR_MESSAGE_CHARS` characters and how many more."""
    if len(message) <= ERROR_MESSAGE_CHARS:
        return message
    return f"{message[:ERROR_MESSAGE_CHARS]}... ({len(message) - ERROR_MESSAGE_CHARS} more characters)"
