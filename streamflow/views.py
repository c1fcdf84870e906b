"""What nimbus answers ``list``, ``status`` and ``cluster`` with, as pure functions of
the records it read: the CLI, the web UI and ``/metrics`` all show these."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from streamflow.records import Assignment, TopologyRecord
from streamflow.telemetry import Report, combine
from streamflow.topology import CHECKPOINT_COMPONENT

SYSTEM_KINDS = {CHECKPOINT_COMPONENT: "checkpoint"}
"""Kinds of the engine's own components other than ackers, as status names them."""


def summary(record: TopologyRecord, assignment: Assignment | None, now: float) -> dict[str, Any]:
    """One topology's line of ``list``."""
    return {
        "name": record.name, "id": record.id, "status": record.status,
        "workers": len(assignment.workers) if assignment is not None else 0,
        "tasks": sum(len(t) for t in record.description.get("tasks", {}).values()),
        "uptime": now - record.submitted,
    }


def status(record: TopologyRecord, assignment: Assignment | None, beats: Mapping[str, dict[str, Any]],
           errors: dict[str, list[dict[str, Any]]], now: float, worker_timeout: float) -> dict[str, Any]:
    """A topology's ``status``: its workers (alive while their heartbeat is under
    ``worker_timeout`` old), and per component its tasks, combined counters and last error."""
    layout = record.task_layout()
    reports: dict[str, list[Report]] = {c: [] for c, tasks in layout.items() if tasks}
    workers = []
    for key, w in sorted((assignment.workers if assignment is not None else {}).items()):
        beat = beats.get(key)
        for report in (beat or {}).get("stats", []):
            if report["component"] in reports:
                reports[report["component"]].append(report)
        workers.append({
            "slot": key, "host": w.host, "port": w.port, "tasks": list(w.tasks),
            "alive": beat is not None and now - beat["time"] < worker_timeout,
            "heartbeat": beat["time"] if beat else None,
            "uptime": now - beat["started"] if beat else None,
            "pid": beat["pid"] if beat else None,
            "dropped": beat.get("dropped", 0) if beat else None,
        })
    components = {}
    for c, tasks in reports.items():
        spec = record.components.get(c, {"kind": SYSTEM_KINDS.get(c, "acker"), "inputs": []})
        last = errors[c][-1] if errors.get(c) else None
        components[c] = {"tasks": len(layout[c]), "inputs": spec["inputs"], **combine(spec["kind"], tasks),
                         "last_error": last}
    return {
        "name": record.name, "id": record.id, "status": record.status,
        "uptime": now - record.submitted, "log_level": record.log_level,
        "workers": workers, "components": components, "errors": errors,
    }


def cluster(leader: str | None, nimbus: list[str], supervisors: Mapping[str, dict[str, Any]],
            assignments: Mapping[str, Assignment], statuses: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``cluster`` answer: nimbus processes, supervisors with their slots in use, and
    a line per running topology (from its ``status``)."""
    used: dict[str, int] = {}
    for assignment in assignments.values():
        for w in assignment.workers.values():
            used[w.supervisor] = used.get(w.supervisor, 0) + 1
    topologies = []
    for st in statuses:
        spouts = [c for c in st["components"].values() if c["kind"] == "spout"]
        topologies.append({
            "name": st["name"], "id": st["id"], "status": st["status"],
            "uptime": st["uptime"], "workers": len(st["workers"]),
            "tasks": sum(c["tasks"] for c in st["components"].values()),
            "rate": round(sum(c["rate"] for c in spouts), 1),
        })
    return {
        "leader": leader, "nimbus": nimbus,
        "supervisors": [
            {"id": sid, "host": info["host"], "slots": len(info["ports"]), "used": used.get(sid, 0)}
            for sid, info in sorted(supervisors.items())
        ],
        "topologies": topologies,
    }
