"""What a supervisor bounds of each worker, on a real cluster: its address space
(``--worker-memory-mb``: a bolt that allocates past it fails alone, with its error in
status, while word count runs under it), and its log file, rotated by size while it runs
(``--log-max-bytes``), each line also on the supervisor's stdout
(``--worker-logs-to-stdout``), and still read by ``streamflow logs`` after a rotation."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import ROOT, Cluster, wait_for
from zookeeper import ZooKeeperServer

from streamflow.logpump import rotated

MEMORY_MB = 1024
LOG_MAX_BYTES = 20_000
HOG = """\
from streamflow import BasicBolt, TopologyBuilder
from streamflow.testing import ListSpout


class Hog(BasicBolt):
    def process(self, tup):
        self.kept = bytearray(tup.values[0] * 1024 * 1024)


def build(config):
    b = TopologyBuilder("hog")
    b.set_spout("source", ListSpout([(4096,)], ["mb"]))
    b.set_bolt("hog", Hog()).shuffle_grouping("source")
    return b.build()
"""
CHATTY = """\
import logging

from streamflow import BasicBolt, TopologyBuilder
from streamflow.testing import ListSpout

log = logging.getLogger("chatty")


class Chatty(BasicBolt):
    def process(self, tup):
        for line in range(20):
            log.warning("chatty line %d of tuple %d %s", line, tup.values[0], "x" * 100)


def build(config):
    b = TopologyBuilder("chatty")
    b.set_spout("source", ListSpout([(n,) for n in range(100)], ["n"]))
    b.set_bolt("chatty", Chatty()).shuffle_grouping("source")
    return b.build()
"""


@pytest.fixture(scope="module")
def capped(zookeeper: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One nimbus, one supervisor of two slots whose workers are capped at
    :data:`MEMORY_MB` and whose logs rotate past :data:`LOG_MAX_BYTES`. glibc's malloc
    arenas are kept to two, as the manifests do, so that idle threads do not reserve
    the cap away."""
    c = Cluster(zookeeper.hosts, f"/streamflow-limits-{uuid.uuid4().hex[:8]}", tmp_path_factory.mktemp("limits"),
                nimbus_count=1, supervisors=1, supervisor_settings={"worker-memory-mb": str(MEMORY_MB),
                                                    "log-max-bytes": str(LOG_MAX_BYTES),
                                                    "worker-logs-to-stdout": "1"})
    c.env["MALLOC_ARENA_MAX"] = "2"
    c.start()
    yield c
    c.stop()


@pytest.fixture
def cluster(capped: Cluster) -> Iterator[Cluster]:
    yield capped
    capped.kill_all()


def submit(cluster: Cluster, tmp_path: Path, name: str, code: str) -> None:
    (tmp_path / name).mkdir()
    topology = tmp_path / name / f"{name}.py"
    topology.write_text(code)
    result = cluster.cli("submit", str(topology), "--name", name)
    assert result.returncode == 0, result.stderr


def address_space_limit(pid: int) -> str:
    """The soft limit of ``Max address space`` in /proc/PID/limits, in bytes."""
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if line.startswith("Max address space"))
    return line.split()[3]


def test_a_bolt_allocating_past_the_cap_fails_with_its_error_in_status(cluster: Cluster, tmp_path: Path) -> None:
    submit(cluster, tmp_path, "hog", HOG)
    errors = wait_for(lambda: cluster.status("hog")["errors"].get("hog"), 60, "the hog's error in status")
    assert "MemoryError" in errors[-1]["message"]
    [pid] = cluster.worker_pids().values()
    assert address_space_limit(pid) == str(MEMORY_MB * 1024 * 1024)


def test_word_count_runs_under_the_cap(cluster: Cluster, tmp_path: Path) -> None:
    source = tmp_path / "sentences.txt"
    source.write_text("the cap leaves room\n" * 2000)
    out = tmp_path / "counts.jsonl"
    result = cluster.cli("submit", str(ROOT / "topologies" / "wordcount.py"), "--name", "wc", "--workers", "2",
                         "-c", f"input.path={source}", "-c", f"output.path={out}")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: cluster.status("wc")["components"]["sentences"]["acked"] == 2000, 120, "every sentence acked")
    assert all(address_space_limit(pid) == str(MEMORY_MB * 1024 * 1024) for pid in cluster.worker_pids().values())
    assert not cluster.status("wc")["errors"]


def test_a_worker_log_rotates_while_it_runs_and_goes_to_stdout(cluster: Cluster, tmp_path: Path) -> None:
    submit(cluster, tmp_path, "chatty", CHATTY)
    [sid] = cluster.supervisors
    logs = cluster.workdir / sid / "logs"

    def lines_of_the_last_tuple() -> list[dict[str, Any]]:
        result = cluster.cli("logs", "chatty", "--json", "--component", "chatty")
        assert result.returncode == 0, result.stderr
        return [line for line in map(json.loads, result.stdout.splitlines())
                if "of tuple 99 " in line["message"]]

    wait_for(lines_of_the_last_tuple, 60, "the last tuple's lines through streamflow logs")  # 100 x 20 x ~250 B
    [live] = logs.glob("chatty-*.log")
    assert rotated(live).exists()
    assert LOG_MAX_BYTES <= rotated(live).stat().st_size < LOG_MAX_BYTES + 64 * 1024
    assert live.stat().st_size < LOG_MAX_BYTES + 64 * 1024
    echoed = (cluster.workdir / f"{sid}.log").read_text()
    assert "chatty line 19 of tuple 99 " in echoed and "chatty line 0 of tuple 0 " in echoed
