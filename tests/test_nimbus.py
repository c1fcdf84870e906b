"""Nimbus's API against what a client may send it, and a kill that outlives its leader:
real nimbus processes on a real ZooKeeper."""

from __future__ import annotations

import base64
import functools
import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cluster import TOKEN, Cluster, wait_for
from commands import ROOT, assert_one_line_error

from streamflow.client import NimbusClient

WORDCOUNT = str(ROOT / "topologies" / "wordcount.py")


def post(cluster: Cluster, op: str, body: Any, name: str = "") -> tuple[int, dict[str, Any]]:
    """POST ``body`` (any JSON) to the API as a client other than the CLI might."""
    request = urllib.request.Request(f"{cluster.url}/api/v1/{op}" + (f"/{name}" if name else ""),
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(("body", "reason"), [
    ([1, 2], "the body is not a JSON object"),
    ({"name": "ok"}, "submit needs file (text), package (base64) and config (an object)"),
    ({"name": "ok", "file": "t.py", "package": "AAA", "config": []}, "submit needs file"),
    ({"name": "ok", "file": "t.py", "package": "not base64!"}, "package is not base64"),
    ({"name": "ok", "file": "t.py", "package": base64.b64encode(b"not a zip").decode()},
     "code package is not a zip: File is not a zip file"),
])
def test_a_malformed_submission_is_refused_in_one_line(cluster: Cluster, body: Any, reason: str) -> None:
    status, answer = post(cluster, "submit", body)
    assert status == 400, answer
    assert reason in answer["error"] and "\n" not in answer["error"], answer
    assert cluster.api("list")["topologies"] == []


def test_a_malformed_rebalance_is_refused_in_one_line(cluster: Cluster, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a b c\n")
    assert cluster.cli("submit", WORDCOUNT, "--name", "shape", "-c", f"input.path={source}").returncode == 0
    status, answer = post(cluster, "rebalance", {"parallelism": ["split", 2]}, "shape")
    assert (status, answer) == (400, {"error": "parallelism must be an object of component: tasks"})


def test_a_rebalance_that_would_lose_state_kept_in_memory_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a b c\n")
    assert cluster.cli("submit", WORDCOUNT, "--name", "in-memory", "-c", f"input.path={source}").returncode == 0
    refused = cluster.cli("rebalance", "in-memory", "--parallelism", "count=4")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "keeps the state of count in its workers' memory" in refused.stderr, refused.stderr




def test_a_kill_is_carried_out_by_the_next_leader(own_cluster: Cluster, tmp_path: Path) -> None:
    """The time to remove a killed topology is in ZooKeeper, not in the leader that took
    the kill: a leader that dies during the wait leaves it to the next one (before, the
    topology stayed 'killed' with its workers running, and a second kill found nothing)."""
    c = own_cluster
    source = tmp_path / "in.txt"
    source.write_text("a b c\n" * 100)
    assert c.cli("submit", WORDCOUNT, "--name", "doomed", "--workers", "2",
                 "-c", f"input.path={source}").returncode == 0
    wait_for(lambda: len(c.worker_pids()) == 2, 60, "2 workers running")
    leader = c.api("cluster")["leader"]
    killed = c.cli("kill", "doomed", "--wait", "3", nimbus=leader)
    assert killed.returncode == 0, killed.stderr
    standby = next(url for url in c.nimbus if url != leader)
    c.nimbus[leader].kill()
    c.nimbus[leader].wait(10)
    wait_for(lambda: not c.worker_pids(), 60, "the workers stopped by the next leader")
    wait_for(lambda: c.cli("list", nimbus=standby).stdout.count("doomed") == 0, 30, "the topology gone")


def test_a_nimbus_whose_port_is_taken_says_so_in_one_line(zookeeper: Any, zk_root: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "streamflow.cli", "nimbus", "--zk", zookeeper.hosts, "--zk-root", zk_root,
             "--port", str(port)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    line = assert_one_line_error(result, f"nimbus cannot serve on port {port}: Address already in use")
    assert line.startswith("streamflow: error: ")


def test_a_nimbus_whose_session_expired_registers_again(own_cluster: Cluster) -> None:
    c = own_cluster
    leader = c.api("cluster")["leader"]
    standby = next(url for url in c.nimbus if url != leader)
    registered = functools.partial(NimbusClient(leader, TOKEN, timeout=10).call, "GET", "cluster")
    c.nimbus[standby].send_signal(signal.SIGSTOP)  # its 3 s session expires meanwhile
    try:
        wait_for(lambda: standby not in registered()["nimbus"], 30, "the standby's registration gone")
    finally:
        c.nimbus[standby].send_signal(signal.SIGCONT)
    wait_for(lambda: standby in registered()["nimbus"], 30, "the standby registered again")
