"""The cluster's state in a real ZooKeeper: ephemeral nodes across sessions, a topology's
removal while its workers still write, and error records written at once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from zookeeper import ZooKeeperServer

from streamflow.records import TopologyRecord
from streamflow.zkstate import ERROR_MESSAGE_CHARS, ClusterState

TOPOLOGY = "words-1"


@pytest.fixture
def states(zookeeper: ZooKeeperServer, zk_root: str) -> Iterator[Callable[[], ClusterState]]:
    """``states()`` connects one more client (its own session, as each process has) under
    this test's root; all are closed after the test."""
    made: list[ClusterState] = []

    def connect() -> ClusterState:
        state = ClusterState(zookeeper.hosts, zk_root, session_timeout=2.0)
        state.start()
        made.append(state)
        return state

    yield connect
    for state in made:
        state.stop()


def submitted(state: ClusterState) -> ClusterState:
    """``state`` with :data:`TOPOLOGY` submitted as nimbus does: its code, then its record."""
    state.write_code(TOPOLOGY, b"package")
    state.write_topology(TopologyRecord(TOPOLOGY, "words", "topology.py", "00"))
    return state


def error(message: str) -> dict[str, Any]:
    return {"time": 1.0, "task": 3, "worker": "sup1:6700", "message": message}


EPHEMERAL_NODES: dict[str, tuple[Callable[[ClusterState], None], Callable[[ClusterState], bool]]] = {
    "supervisor": (lambda state: state.register_supervisor("sup1", {"host": "h"}),
                   lambda state: "sup1" in state.supervisors()),
    "nimbus": (lambda state: state.register_nimbus("http://h:8080"),
               lambda state: state.nimbus_urls() == ["http://h:8080"]),
    "heartbeat": (lambda state: state.write_heartbeat(TOPOLOGY, "sup1:6700", {"time": 1.0}),
                  lambda state: "sup1:6700" in state.heartbeats(TOPOLOGY)),
}
"""How each role writes its ephemeral node, and how another client sees it there."""


@pytest.mark.parametrize("kind", sorted(EPHEMERAL_NODES))
def test_an_ephemeral_node_left_by_an_earlier_session_is_taken_over(
        states: Callable[[], ClusterState], kind: str) -> None:
    """A process restarted within its session timeout finds its old node, still owned by
    the dead process's session: it must own it from then on, not lose it when that
    session ends."""
    write, present = EPHEMERAL_NODES[kind]
    old, new, observer = submitted(states()), states(), states()
    write(old)
    write(new)
    old.stop()  # the old session ends, and with it every node it still owns
    assert present(observer)
    new.stop()
    assert not present(observer)


def test_a_supervisor_is_registered_only_while_its_session_owns_its_node(
        states: Callable[[], ClusterState]) -> None:
    old, new = states(), states()
    assert not new.supervisor_registered("sup1")
    old.register_supervisor("sup1", {"host": "a"})
    assert old.supervisor_registered("sup1") and not new.supervisor_registered("sup1")
    new.register_supervisor("sup1", {"host": "a"})
    assert new.supervisor_registered("sup1") and not old.supervisor_registered("sup1")


def test_heartbeats_and_errors_of_a_removed_topology_leave_nothing(states: Callable[[], ClusterState]) -> None:
    nimbus, worker = submitted(states()), states()
    worker.write_heartbeat(TOPOLOGY, "sup1:6700", {"time": 1.0})
    worker.record_error(TOPOLOGY, "split", error("boom"))
    assert nimbus.heartbeats(TOPOLOGY) and nimbus.errors(TOPOLOGY)
    nimbus.delete_topology(TOPOLOGY)
    worker.write_heartbeat(TOPOLOGY, "sup1:6701", {"time": 2.0})  # a worker's last beat, after
    worker.record_error(TOPOLOGY, "split", error("late"))
    for part in ("workerbeats", "errors", "topologies", "code"):
        assert nimbus.zk.exists(nimbus.path(part, TOPOLOGY)) is None, part


def test_a_topology_is_removed_whole_while_a_worker_adds_a_heartbeat(states: Callable[[], ClusterState]) -> None:
    """kazoo deletes a node's children one by one, then the node: a heartbeat created in
    between fails the node's deletion, which must not leave the code and record behind."""
    nimbus, worker = submitted(states()), states()
    for port in range(200):  # many children: the deletion takes a while
        worker.write_heartbeat(TOPOLOGY, f"sup1:{port}", {"time": 1.0})
    first_gone = threading.Event()

    def watch(data: bytes | None, stat: Any) -> None:
        if stat is None:
            first_gone.set()

    def last_beat() -> None:
        if first_gone.wait(30):
            worker.write_heartbeat(TOPOLOGY, "sup2:7000", {"time": 2.0})

    worker.zk.DataWatch(worker.path("workerbeats", TOPOLOGY, "sup1:0"), watch)
    late = threading.Thread(target=last_beat)
    late.start()
    nimbus.delete_topology(TOPOLOGY)
    late.join()
    for part in ("workerbeats", "errors", "topologies", "code"):
        assert nimbus.zk.exists(nimbus.path(part, TOPOLOGY)) is None, part


def report_at_once(state: ClusterState, component: str, start: threading.Barrier, n: int) -> None:
    start.wait(10)
    state.record_error(TOPOLOGY, component, error(f"error {n}"))


def test_errors_reported_at_once_by_many_workers_are_all_kept(states: Callable[[], ClusterState]) -> None:
    workers = [states() for _ in range(8)]
    submitted(workers[0])
    for component in ("split", "count", "sink", "join", "parse"):
        start = threading.Barrier(len(workers))
        threads = [threading.Thread(target=report_at_once, args=(state, component, start, n))
                   for n, state in enumerate(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        kept = workers[0].errors(TOPOLOGY)[component]
        assert sorted(e["message"] for e in kept) == sorted(f"error {n}" for n in range(len(workers)))


def test_an_error_keeps_the_start_of_a_long_message(states: Callable[[], ClusterState]) -> None:
    """A message quoting a large record: ten of them must stay far below ZooKeeper's 1 MB."""
    state = submitted(states())
    huge = "x" * 200_000
    for _ in range(10):
        state.record_error(TOPOLOGY, "parse", error(huge))
    kept = state.errors(TOPOLOGY)["parse"]
    assert len(kept) == 10
    cut = 200_000 - ERROR_MESSAGE_CHARS
    assert kept[-1]["message"] == "x" * ERROR_MESSAGE_CHARS + f"... ({cut} more characters)"
    data, _ = state.zk.get(state.path("errors", TOPOLOGY, "parse"))
    assert len(data) < 20 * ERROR_MESSAGE_CHARS
    state.record_error(TOPOLOGY, "parse", error("short"))
    assert state.errors(TOPOLOGY)["parse"][-1]["message"] == "short"
