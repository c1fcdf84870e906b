"""Nimbus's list, status and cluster answers, from records alone."""

from __future__ import annotations

from streamflow import views
from streamflow.records import Assignment, TopologyRecord, WorkerAssignment

RECORD = TopologyRecord(
    "words-1", "words", "w.py", "00", workers=2, submitted=100.0,
    description={"components": {"source": {"kind": "spout", "parallelism": 1, "inputs": []},
                                "split": {"kind": "bolt", "parallelism": 2, "inputs": ["source"]}},
                 "tasks": {"source": [1], "split": [2, 3]}, "config": {}},
)
ASSIGNMENT = Assignment(1, {"a:7000": WorkerAssignment("a", "ha", 7000, (1, 2, 4)),
                            "b:7000": WorkerAssignment("b", "hb", 7000, (3, 5))})


def test_summary_counts_workers_and_tasks() -> None:
    assert views.summary(RECORD, ASSIGNMENT, 130.0) == {
        "name": "words", "id": "words-1", "status": "active", "workers": 2, "tasks": 3, "uptime": 30.0}
    assert views.summary(RECORD, None, 130.0)["workers"] == 0


def test_status_shows_live_and_silent_workers_and_every_component() -> None:
    beats = {"a:7000": {"time": 125.0, "started": 110.0, "pid": 7, "stats": []}}
    status = views.status(RECORD, ASSIGNMENT, beats, {"split": [{"message": "boom"}]}, 130.0, worker_timeout=30.0)
    workers = {w["slot"]: w for w in status["workers"]}
    assert workers["a:7000"]["alive"] and workers["a:7000"]["uptime"] == 20.0
    assert not workers["b:7000"]["alive"] and workers["b:7000"]["pid"] is None
    assert set(status["components"]) == {"source", "split", "__acker"}
    assert status["components"]["split"]["last_error"] == {"message": "boom"}
    assert status["components"]["__acker"]["kind"] == "acker"


def test_cluster_counts_the_slots_used_per_supervisor() -> None:
    answer = views.cluster("http://n1", ["http://n1"], {"a": {"host": "ha", "ports": [7000, 7001]}},
                           {"words-1": ASSIGNMENT}, [])
    assert answer["supervisors"] == [{"id": "a", "host": "ha", "slots": 2, "used": 1}]
    assert answer["leader"] == "http://n1" and answer["topologies"] == []
