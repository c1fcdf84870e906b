"""The supervisor as a node runs it: a ``streamflow supervisor`` process against a real
ZooKeeper, real worker processes, ``kill -9`` and SIGSTOP. Most tests write the
assignments themselves, as nimbus would, to give the supervisor workers that hang or
code that cannot be unpacked; one runs a nimbus, to see the supervisor get work."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cluster import ROOT, Cluster, free_port_run, wait_for
from kazoo.security import ACL, ANYONE_ID_UNSAFE, OPEN_ACL_UNSAFE, Permissions
from zookeeper import ZooKeeperServer

from streamflow.package import pack
from streamflow.records import Assignment, TopologyRecord, WorkerAssignment
from streamflow.supervisor import FILES_KEPT_SECS
from streamflow.worker_slot import STOP_GRACE_SECS
from streamflow.zkstate import ClusterState

HANGS = """\
import sys, threading
from pathlib import Path
from typing import Any

if "worker" in sys.argv:  # a worker stuck loading its topology; it says so in its directory
    Path(sys.argv[sys.argv.index("--port") + 1] + ".loading").touch()
    threading.Event().wait()
"""
ONE_BOLT = """\
from streamflow import BasicBolt, TopologyBuilder
from streamflow.testing import ListSpout


def build(config):
    b = TopologyBuilder("one-bolt")
    b.set_spout("source", ListSpout([(1,)], ["n"]))
    b.set_bolt("sink", BasicBolt()).shuffle_grouping("source")
    return b.build()
"""
IGNORES_SIGTERM = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + HANGS


class Assigner:
    """This test's client of a supervisor's ZooKeeper, assigning it work as nimbus would,
    and what it sees of that supervisor's files."""

    def __init__(self, state: ClusterState, supervisor_id: str, data_dir: Path, tmp_path: Path) -> None:
        self.state, self.id, self.data_dir, self.tmp_path = state, supervisor_id, data_dir, tmp_path

    def package(self, code: str) -> bytes:
        directory = self.tmp_path / f"package-{len(list(self.tmp_path.glob('package-*')))}"
        directory.mkdir()
        (directory / "topology.py").write_text(code)
        return pack(directory / "topology.py")[1]

    def assign(self, topology: str, package: bytes, ports: list[int],
               config: dict[str, Any] | None = None) -> None:
        """Submit ``topology`` and assign it a task on each of ``ports``, as nimbus would."""
        self.state.write_code(topology, package)
        self.state.write_topology(TopologyRecord(topology, topology, "topology.py", "00", config=config or {},
                                                 workers=len(ports)))
        workers = [WorkerAssignment(self.id, "127.0.0.1", port, (task,)) for task, port in enumerate(ports)]
        self.state.write_assignment(topology, Assignment(1, {w.key: w for w in workers}))

    def loading(self, topology: str, port: int) -> bool:
        """Whether the worker of ``topology`` on ``port`` got as far as loading its code."""
        return (self.data_dir / "code" / topology / f"{port}.loading").exists()


class Node(Assigner):
    """One supervisor process with four slots, and this test's client of its ZooKeeper."""

    def __init__(self, cluster: Cluster, state: ClusterState, tmp_path: Path) -> None:
        sid = cluster.start_supervisor()
        super().__init__(state, sid, cluster.workdir / sid, tmp_path)
        self.cluster = cluster
        base = cluster.health_ports[self.id] - cluster.slots
        self.ports = list(range(base, base + cluster.slots))
        self.health = f"http://127.0.0.1:{cluster.health_ports[self.id]}"
        self.log = cluster.workdir / f"{self.id}.log"

    def files(self, topology: str, port: int) -> list[Path]:
        return [self.data_dir / "code" / topology, self.data_dir / "logs" / f"{topology}-{port}.log"]

    def logged(self, text: str) -> list[float]:
        """When the supervisor logged a line containing ``text``."""
        return [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                for line in self.log.read_text().splitlines() if text in line]


@pytest.fixture
def node(zookeeper: ZooKeeperServer, zk_root: str, tmp_path: Path) -> Iterator[Node]:
    cluster = Cluster(zookeeper.hosts, zk_root, tmp_path / "cluster", nimbus_count=0, supervisors=0, slots=4)
    cluster.workdir.mkdir()
    state = ClusterState(zookeeper.hosts, zk_root)
    state.start()
    try:
        n = Node(cluster, state, tmp_path)
        wait_for(lambda: n.id in state.supervisors(), 30, "the supervisor registered")
        yield n
    finally:
        cluster.stop()
        state.stop()


def readiness(url: str) -> tuple[int, str]:
    """The status and reason of a role's ``/readyz`` (0 and "" when nothing answers)."""
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())["reason"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["reason"]
    except OSError:
        return 0, ""


def live_sessions(zookeeper: ZooKeeperServer) -> set[int]:
    """The ids of the sessions ZooKeeper holds (``dump`` lists them, one a line)."""
    return {int(line, 16) for line in zookeeper.command("dump").splitlines() if line.startswith("\t0x")}


def running(pid: int) -> bool:
    """Whether ``pid`` runs (an orphan killed may stay a zombie until its new parent reaps it)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def kill_and_restart(process: subprocess.Popen[bytes], log: Path) -> subprocess.Popen[bytes]:
    """``kill -9`` a role's process, then start it again at once with the same command,
    environment and directory, as a container's restart does."""
    environ = Path(f"/proc/{process.pid}/environ").read_bytes().decode()
    env = dict(entry.split("=", 1) for entry in environ.split("\0") if entry)
    cwd = os.readlink(f"/proc/{process.pid}/cwd")
    process.kill()
    process.wait()
    with open(log, "ab") as out:
        return subprocess.Popen(process.args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def test_a_supervisor_restarted_within_its_session_timeout_stays_registered_and_gets_work(
        zookeeper: ZooKeeperServer, zk_root: str, tmp_path: Path) -> None:
    """The restarted process finds its znode still there, owned by the killed process's
    session (3 s timeout), which takes the znode with it when it expires."""
    cluster = Cluster(zookeeper.hosts, zk_root, tmp_path / "cluster", nimbus_count=1, supervisors=1).start()
    state = ClusterState(zookeeper.hosts, zk_root)
    state.start()
    try:
        sid = next(iter(cluster.supervisors))
        znode = state.zk.exists(state.path("supervisors", sid))
        assert znode is not None
        cluster.supervisors[sid] = kill_and_restart(cluster.supervisors[sid], cluster.workdir / f"{sid}.log")
        wait_for(lambda: znode.ephemeralOwner not in live_sessions(zookeeper), 30,
                 "the killed supervisor's session to expire")
        assert sid in state.supervisors()
        (tmp_path / "sentences.txt").write_text("the quick brown fox\n" * 100)
        submitted = cluster.cli("submit", str(ROOT / "topologies" / "wordcount.py"), "--name", "after-restart",
                                "--workers", "2", "-c", f"input.path={tmp_path / 'sentences.txt'}",
                                "-c", f"output.path={tmp_path / 'counts.jsonl'}")
        assert submitted.returncode == 0, submitted.stderr

        def working() -> bool:
            workers = cluster.status("after-restart")["workers"]
            return len(workers) == 2 and all(w["alive"] and w["slot"].startswith(sid + ":") for w in workers)

        wait_for(working, 60, "two live workers on the restarted supervisor")
    finally:
        cluster.stop()
        state.stop()


def test_a_supervisor_whose_session_expired_is_not_ready_until_it_registers_again(node: Node) -> None:
    """While it cannot register (here: the supervisors' node lets no one create), its
    readiness says so; once it can, it registers, without a restart."""
    wait_for(lambda: readiness(node.health)[0] == 200, 30, "the supervisor ready")
    parent = node.state.path("supervisors")
    node.state.zk.set_acls(parent, [ACL(Permissions.READ | Permissions.DELETE | Permissions.ADMIN,
                                        ANYONE_ID_UNSAFE)])
    try:
        process = node.cluster.supervisors[node.id]
        process.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: node.id not in node.state.supervisors(), 30, "its session to expire (3 s)")
        finally:
            process.send_signal(signal.SIGCONT)
        wait_for(lambda: readiness(node.health) == (503, "slots not registered"), 30,
                 "not ready while it cannot register")
    finally:
        node.state.zk.set_acls(parent, OPEN_ACL_UNSAFE)
    wait_for(lambda: node.id in node.state.supervisors(), 30, "registered again")
    wait_for(lambda: readiness(node.health)[0] == 200, 30, "ready again")


def test_a_worker_that_cannot_start_backs_off_and_leaves_the_other_slots_starting(node: Node) -> None:
    unreadable, other = node.ports[:2]
    node.assign("a-unreadable-1", b"not a zip file", [unreadable])  # sorted first: tried first
    node.assign("b-hangs-1", node.package(HANGS), [other])
    wait_for(lambda: node.loading("b-hangs-1", other), 60, "the other slot's worker started")
    failure = f"cannot start the worker on port {unreadable}"
    tries = wait_for(lambda: len(t := node.logged(failure)) >= 3 and t, 30, "three tries on the unreadable code")
    assert tries[1] - tries[0] >= 1 and tries[2] - tries[1] >= 2, tries  # backs off: 1, 2, 4 s
    assert "File is not a zip file" in node.log.read_text() and "Traceback" not in node.log.read_text()


def test_workers_no_longer_assigned_are_stopped_together(node: Node) -> None:
    """Workers that ignore SIGTERM are killed after STOP_GRACE_SECS: all four at once."""
    node.assign("stubborn-1", node.package(IGNORES_SIGTERM), node.ports)
    wait_for(lambda: all(node.loading("stubborn-1", port) for port in node.ports), 60,
             "four workers that ignore SIGTERM")
    began = time.monotonic()
    node.state.delete_assignment("stubborn-1")
    wait_for(lambda: not node.cluster.worker_pids(), 60, "the workers stopped")
    assert STOP_GRACE_SECS <= time.monotonic() - began < 2 * STOP_GRACE_SECS


def age(paths: list[Path], seconds: float) -> None:
    """Make ``paths`` look last changed ``seconds`` ago."""
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


def test_code_and_logs_of_a_topology_no_longer_assigned_go_once_idle(node: Node) -> None:
    kept, gone, recent = (("kept-1", node.ports[0]), ("gone-1", node.ports[1]), ("recent-1", node.ports[2]))
    for topology, port in (kept, gone, recent):
        node.assign(topology, node.package(HANGS), [port])
    wait_for(lambda: all(node.loading(*slot) for slot in (kept, gone, recent)), 60, "three workers")
    for topology, _ in (gone, recent):
        node.state.delete_assignment(topology)
    wait_for(lambda: not {gone[1], recent[1]} & set(node.cluster.worker_pids()), 30, "two workers stopped")
    age(node.files(*kept) + node.files(*gone), FILES_KEPT_SECS + 60)
    wait_for(lambda: not any(path.exists() for path in node.files(*gone)), 30,
             "the idle unassigned topology's code and log removed")
    assert all(path.exists() for path in node.files(*kept) + node.files(*recent))


def test_workers_left_by_a_supervisor_killed_with_9_are_stopped_by_the_next_one(node: Node) -> None:
    """A supervisor's workers outlive its ``kill -9``. The process that replaces it stops
    them and starts the slots afresh: before, they went on unwatched beside the new
    process's workers, which could not bind the slots' ports."""
    port = node.ports[0]
    node.assign("t-orphan", node.package(HANGS), [port])
    wait_for(lambda: node.loading("t-orphan", port), 60, "the worker loading its code")
    (node.data_dir / "code" / "t-orphan" / f"{port}.loading").unlink()
    orphan = node.cluster.worker_pids()[port]
    node.cluster.supervisors[node.id] = kill_and_restart(node.cluster.supervisors[node.id], node.log)
    wait_for(lambda: not running(orphan), 30, "the orphaned worker stopped")
    wait_for(lambda: node.loading("t-orphan", port), 60, "a new worker loading its code")
    assert node.cluster.worker_pids()[port] != orphan
    assert node.logged(f"stopping workers left by an earlier supervisor process: pids [{orphan}]")


def test_a_bad_serializer_registration_is_the_topology_error_not_a_traceback(node: Node) -> None:
    port = node.ports[0]
    node.assign("badcodec-1", node.package(ONE_BOLT), [port], {"topology.serializer.register": ["no.such.Type"]})
    errors = wait_for(lambda: node.state.errors("badcodec-1").get("__worker"), 60, "the worker's error")
    assert "cannot load the topology" in errors[-1]["message"] and "no.such" in errors[-1]["message"]
    log = node.data_dir / "logs" / f"badcodec-1-{port}.log"
    assert "Traceback" not in log.read_text()


def start_supervisor(zookeeper: ZooKeeperServer, zk_root: str, cwd: Path,
                     **settings: str) -> subprocess.Popen[str]:
    """``streamflow supervisor`` in ``cwd``, its defaults but for ``settings`` (and a short
    session timeout), its output captured."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, STREAMFLOW_ZK=zookeeper.hosts, STREAMFLOW_ZK_ROOT=zk_root,
               STREAMFLOW_ZK_SESSION_TIMEOUT="3", **{f"STREAMFLOW_{k.upper()}": v for k, v in settings.items()})
    return subprocess.Popen([sys.executable, "-m", "streamflow.cli", "supervisor"], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def refused(process: subprocess.Popen[str]) -> str:
    """The one error line a supervisor that refused to start printed (exit 2)."""
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2 and "Traceback" not in output, output
    [line] = [line for line in output.splitlines() if line.startswith("streamflow: error:")]
    return line


def test_a_supervisor_with_the_default_data_dir_runs_workers_from_any_directory(
        zookeeper: ZooKeeperServer, zk_root: str, tmp_path: Path) -> None:
    base = free_port_run(3)
    process = start_supervisor(zookeeper, zk_root, tmp_path / "elsewhere", SLOTS="2", BASE_PORT=str(base),
                               HEALTH_PORT=str(base + 2))
    state = ClusterState(zookeeper.hosts, zk_root)
    state.start()
    try:
        sid = f"127.0.0.1-{base}"
        wait_for(lambda: sid in state.supervisors(), 30, "the supervisor registered")
        node = Assigner(state, sid, tmp_path / "elsewhere" / "streamflow-data" / "supervisor", tmp_path)
        node.assign("t-default-dir", node.package(HANGS), [base])
        wait_for(lambda: node.loading("t-default-dir", base), 60, "the worker loading its code")
    finally:
        process.terminate()
        process.communicate(timeout=30)
        state.stop()


def test_a_taken_health_port_worker_port_or_id_is_one_line_naming_the_option(
        zookeeper: ZooKeeperServer, zk_root: str, tmp_path: Path) -> None:
    base = free_port_run(6)
    first = start_supervisor(zookeeper, zk_root, tmp_path / "first", SLOTS="2", BASE_PORT=str(base),
                             HEALTH_PORT=str(base + 2), ID="node-a")
    state = ClusterState(zookeeper.hosts, zk_root)
    state.start()
    try:
        wait_for(lambda: "node-a" in state.supervisors(), 30, "the first supervisor registered")
        second = tmp_path / "second"
        health = refused(start_supervisor(zookeeper, zk_root, second, SLOTS="2", BASE_PORT=str(base + 3),
                                          HEALTH_PORT=str(base + 2)))
        assert "--health-port" in health and str(base + 2) in health
        with socket.socket() as holder:  # a slot port held by a process that is no worker
            holder.bind(("127.0.0.1", base + 4))
            holder.listen()
            ports = refused(start_supervisor(zookeeper, zk_root, second, SLOTS="2", BASE_PORT=str(base + 3),
                                             HEALTH_PORT=str(base + 5)))
        assert "--base-port" in ports and f"worker port {base + 4}" in ports
        same_id = refused(start_supervisor(zookeeper, zk_root, second, SLOTS="2", BASE_PORT=str(base + 3),
                                           HEALTH_PORT=str(base + 5), ID="node-a"))
        assert "--id" in same_id and f"pid {first.pid}" in same_id
        assert first.poll() is None and state.supervisors()["node-a"]["pid"] == first.pid
    finally:
        first.terminate()
        first.communicate(timeout=30)
        state.stop()
