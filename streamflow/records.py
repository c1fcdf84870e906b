"""The cluster's records as typed data: a topology, its assignment, one worker's share.

Nimbus writes them, supervisors and workers read them, all through
:class:`~streamflow.zkstate.ClusterState`, which stores each as the JSON object of
:meth:`to_json`. The JSON layout is the one clusters already hold, so a record written
by an earlier release reads back; a field missing from a stored record takes its default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streamflow.topology import task_layout

Slot = tuple[str, int]
"""One worker port of one supervisor: ``(supervisor id, port)``."""

STATUSES = ("active", "inactive", "killed")


class RecordError(ValueError):
    """A stored record that does not have the layout of its kind."""


def slot_key(supervisor: str, port: int) -> str:
    """The name of a worker slot in assignments and heartbeats: ``supervisor:port``."""
    return f"{supervisor}:{port}"


@dataclass
class TopologyRecord:
    """A submitted topology: its code's entry file, config, shape and status.

    ``description`` is what ``streamflow describe`` printed for the submitted code
    (components, tasks, config); ``parallelism`` holds the per-component task counts a
    rebalance set, over the description's. ``remove_at`` and ``unassigned_at`` are set
    once it is killed: when the leader removes its assignment, and when it did.
    """

    id: str
    name: str
    file: str
    secret: str
    status: str = "active"
    config: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    parallelism: dict[str, int] = field(default_factory=dict)
    description: dict[str, Any] = field(default_factory=dict)
    submitted: float = 0.0
    log_level: str = "INFO"
    remove_at: float | None = None
    unassigned_at: float | None = None

    @property
    def components(self) -> dict[str, dict[str, Any]]:
        """The submitted components' specs (kind, parallelism, inputs, stateful), by name."""
        return self.description.get("components", {})  # type: ignore[no-any-return]

    def setting(self, key: str, default: Any = None) -> Any:
        """A config value: the record's config (submitted overrides and later changes)
        over the config the topology itself declares."""
        value = self.config.get(key)
        return self.description.get("config", {}).get(key, default) if value is None else value

    def task_layout(self) -> dict[str, tuple[int, ...]]:
        """Component -> its task ids, as the workers lay them out: the parallelism a
        rebalance set over the submitted one, and the ackers the config asks for (one
        per worker unless set)."""
        parallelism = {c: self.parallelism.get(c, spec["parallelism"]) for c, spec in self.components.items()}
        ackers = self.setting("topology.acker.executors")
        stateful = any(spec.get("stateful") for spec in self.components.values())
        return task_layout(parallelism, self.workers if ackers is None else ackers, stateful)

    def to_json(self) -> dict[str, Any]:
        data = {
            "id": self.id, "name": self.name, "status": self.status, "file": self.file,
            "config": self.config, "workers": self.workers, "parallelism": self.parallelism,
            "description": self.description, "secret": self.secret, "submitted": self.submitted,
            "log_level": self.log_level,
        }
        for key in ("remove_at", "unassigned_at"):
            if (value := getattr(self, key)) is not None:
                data[key] = value
        return data

    @classmethod
    def from_json(cls, topology_id: str, data: Any) -> TopologyRecord:
        """The record stored under ``topology_id``; raises :class:`RecordError` naming what
        is wrong with one that is not a topology record."""
        if not isinstance(data, dict):
            raise RecordError(f"topology {topology_id}: the record is not an object")
        try:
            record = cls(
                id=data.get("id", topology_id), name=data["name"], file=data["file"], secret=data["secret"],
                status=data.get("status", "active"), config=data.get("config") or {},
                workers=data.get("workers", 1), parallelism=data.get("parallelism") or {},
                description=data.get("description") or {}, submitted=data.get("submitted", 0.0),
                log_level=data.get("log_level", "INFO"), remove_at=data.get("remove_at"),
                unassigned_at=data.get("unassigned_at"),
            )
        except KeyError as exc:
            raise RecordError(f"topology {topology_id}: the record has no {exc.args[0]!r}") from None
        _check_types(topology_id, record)
        return record


def _check_types(topology_id: str, record: TopologyRecord) -> None:
    """Refuse a record whose fields have the wrong JSON types, naming the first."""
    expected: list[tuple[str, Any, type | tuple[type, ...]]] = [
        ("name", record.name, str), ("file", record.file, str), ("secret", record.secret, str),
        ("config", record.config, dict), ("parallelism", record.parallelism, dict),
        ("description", record.description, dict), ("submitted", record.submitted, (int, float)),
        ("log_level", record.log_level, str),
        ("remove_at", record.remove_at, (int, float, type(None))),
        ("unassigned_at", record.unassigned_at, (int, float, type(None))),
    ]
    for name, value, kind in expected:
        if not isinstance(value, kind) or isinstance(value, bool):
            raise RecordError(f"topology {topology_id}: {name} is {value!r}")
    if record.status not in STATUSES:
        raise RecordError(f"topology {topology_id}: unknown status {record.status!r}")
    if not isinstance(record.workers, int) or isinstance(record.workers, bool) or record.workers < 1:
        raise RecordError(f"topology {topology_id}: workers is {record.workers!r}")


@dataclass(frozen=True)
class WorkerAssignment:
    """The tasks one slot runs, and since when it runs exactly these (a worker that has
    sent no heartbeat yet is launching, not dead, for a while after ``since``)."""

    supervisor: str
    host: str
    port: int
    tasks: tuple[int, ...]
    since: float = 0.0

    @property
    def slot(self) -> Slot:
        return self.supervisor, self.port

    @property
    def key(self) -> str:
        return slot_key(self.supervisor, self.port)

    def to_json(self) -> dict[str, Any]:
        return {"supervisor": self.supervisor, "host": self.host, "port": self.port,
                "tasks": list(self.tasks), "since": self.since}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerAssignment:
        return cls(data["supervisor"], data["host"], data["port"], tuple(sorted(data["tasks"])),
                   data.get("since", 0.0))


@dataclass(frozen=True)
class Assignment:
    """Where a topology's tasks run: the workers by slot key, and a version that grows
    with every change nimbus writes."""

    version: int
    workers: dict[str, WorkerAssignment]

    def slots(self) -> dict[Slot, list[int]]:
        """Slot -> its tasks, as the scheduler takes them."""
        return {w.slot: list(w.tasks) for w in self.workers.values()}

    def routes(self) -> dict[int, tuple[str, int]]:
        """Task id -> address (host, port) of the worker that runs it."""
        return {task: (w.host, w.port) for w in self.workers.values() for task in w.tasks}

    def on_supervisor(self, supervisor: str) -> list[WorkerAssignment]:
        """The workers of this assignment that ``supervisor`` runs."""
        return [w for w in self.workers.values() if w.supervisor == supervisor]

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "workers": {k: w.to_json() for k, w in self.workers.items()}}

    @classmethod
    def from_json(cls, topology_id: str, data: Any) -> Assignment:
        """The assignment stored for ``topology_id``; raises :class:`RecordError` for one
        that is not an assignment."""
        try:
            return cls(data.get("version", 0),
                       {key: WorkerAssignment.from_json(w) for key, w in data.get("workers", {}).items()})
        except (AttributeError, KeyError, TypeError) as exc:
            raise RecordError(f"assignment of {topology_id}: {type(exc).__name__}: {exc}") from None
