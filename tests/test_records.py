"""The typed cluster records: the JSON layout clusters hold reads back, and a malformed
record is refused in one line naming what is wrong."""

from __future__ import annotations

import re
from typing import Any

import pytest

from streamflow.records import Assignment, RecordError, TopologyRecord, WorkerAssignment, slot_key

STORED_TOPOLOGY: dict[str, Any] = {
    "id": "words-1", "name": "words", "status": "active", "file": "wordcount.py",
    "config": {"topology.workers": 2}, "workers": 2, "parallelism": {"split": 3},
    "description": {"components": {"split": {"kind": "bolt", "parallelism": 2, "inputs": []},
                                   "source": {"kind": "spout", "parallelism": 1, "inputs": []}},
                    "config": {"topology.acker.executors": 1}},
    "secret": "ab", "submitted": 12.5, "log_level": "INFO",
}
"""A topology record as a running cluster stores it."""


def test_a_stored_topology_record_reads_back_and_writes_the_same_json() -> None:
    record = TopologyRecord.from_json("words-1", STORED_TOPOLOGY)
    assert (record.name, record.workers, record.parallelism) == ("words", 2, {"split": 3})
    assert record.to_json() == STORED_TOPOLOGY


def test_a_killed_records_removal_times_are_kept_and_absent_ones_not_written() -> None:
    killed = TopologyRecord.from_json("words-1", {**STORED_TOPOLOGY, "status": "killed", "remove_at": 20.0})
    assert killed.remove_at == 20.0 and killed.unassigned_at is None
    assert "unassigned_at" not in killed.to_json() and killed.to_json()["remove_at"] == 20.0


def test_fields_missing_from_an_older_record_take_their_defaults() -> None:
    record = TopologyRecord.from_json("t-1", {"name": "t", "file": "t.py", "secret": "00"})
    assert (record.id, record.status, record.workers, record.log_level) == ("t-1", "active", 1, "INFO")


@pytest.mark.parametrize(("change", "reason"), [
    ({"name": None}, "name is None"),
    ({"workers": float("nan")}, "workers is nan"),
    ({"workers": 0}, "workers is 0"),
    ({"status": "paused"}, "unknown status 'paused'"),
    ({"remove_at": "soon"}, "remove_at is 'soon'"),
    ({"config": "x"}, "config is 'x'"),
])
def test_a_malformed_topology_record_is_refused_naming_the_field(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(RecordError, match=re.escape(f"topology words-1: {reason}")):
        TopologyRecord.from_json("words-1", {**STORED_TOPOLOGY, **change})


def test_a_record_without_a_required_field_or_not_an_object_is_refused() -> None:
    with pytest.raises(RecordError, match="has no 'secret'"):
        TopologyRecord.from_json("words-1", {"name": "words", "file": "w.py"})
    with pytest.raises(RecordError, match="not an object"):
        TopologyRecord.from_json("words-1", [1])


def test_setting_prefers_the_records_config_over_the_declared_one() -> None:
    record = TopologyRecord.from_json("words-1", STORED_TOPOLOGY)
    assert record.setting("topology.workers") == 2
    assert record.setting("topology.acker.executors") == 1
    assert record.setting("topology.message.timeout.secs", 30) == 30


def test_task_layout_applies_the_rebalanced_parallelism_and_the_ackers() -> None:
    layout = TopologyRecord.from_json("words-1", STORED_TOPOLOGY).task_layout()
    assert {c: len(tasks) for c, tasks in layout.items()} == {"split": 3, "source": 1, "__acker": 1}


def test_an_assignment_reads_back_and_gives_slots_and_routes() -> None:
    stored = {"version": 3, "workers": {
        "sup1:6700": {"supervisor": "sup1", "host": "h1", "port": 6700, "tasks": [3, 1], "since": 5.0},
        "sup2:6700": {"supervisor": "sup2", "host": "h2", "port": 6700, "tasks": [2]},
    }}
    assignment = Assignment.from_json("words-1", stored)
    assert assignment.slots() == {("sup1", 6700): [1, 3], ("sup2", 6700): [2]}
    assert assignment.routes() == {1: ("h1", 6700), 3: ("h1", 6700), 2: ("h2", 6700)}
    assert [w.key for w in assignment.on_supervisor("sup2")] == [slot_key("sup2", 6700)]
    assert assignment.workers["sup2:6700"].since == 0.0
    again = Assignment.from_json("words-1", assignment.to_json())
    assert again == assignment


def test_a_malformed_assignment_is_refused() -> None:
    with pytest.raises(RecordError, match="assignment of words-1"):
        Assignment.from_json("words-1", {"version": 1, "workers": {"x": {"host": "h"}}})
    with pytest.raises(RecordError):
        Assignment.from_json("words-1", ["not", "an", "object"])


def test_a_worker_assignment_names_its_slot() -> None:
    worker = WorkerAssignment("sup1", "h", 6701, (1, 2))
    assert (worker.slot, worker.key) == (("sup1", 6701), "sup1:6701")
