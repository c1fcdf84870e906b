"""Nimbus's API over HTTPS (``--tls-cert``, ``--tls-key``, ``--tls-ca``): the CLI submits
through a standby, which forwards to the leader over HTTPS, and the topology counts exactly;
plain HTTP and a client without the CA get nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cluster import ROOT, TOKEN, Cluster, wait_for
from test_cluster import final_counts, words_input
from test_link_security import write_certificates


@pytest.fixture
def https_cluster(zookeeper: Any, zk_root: str, tmp_path: Path) -> Iterator[Cluster]:
    (tmp_path / "tls").mkdir()
    cert, key, ca = write_certificates(tmp_path / "tls", ip="127.0.0.1")
    c = Cluster(zookeeper.hosts, zk_root, tmp_path / "cluster", nimbus_count=2, supervisors=1, slots=2,
                token=TOKEN, nimbus_settings={"tls-cert": str(cert), "tls-key": str(key), "tls-ca": str(ca)})
    c.start()
    yield c
    c.stop()


def test_a_topology_submitted_through_a_standby_over_https_counts_exactly(https_cluster: Cluster,
                                                                         tmp_path: Path) -> None:
    c = https_cluster
    leader = c.api("cluster")["leader"]
    assert leader.startswith("https://")
    standby = next(url for url in c.nimbus if url != leader)
    source, expected = words_input(tmp_path, 500)
    out = tmp_path / "counts.jsonl"
    result = c.cli("submit", str(ROOT / "topologies" / "wordcount.py"), "--name", "https", "--workers", "2",
                   "-c", f"input.path={source}", "-c", f"output.path={out}", nimbus=standby)
    assert result.returncode == 0, result.stderr  # the standby forwarded it to the leader, over HTTPS
    wait_for(lambda: final_counts(out) == dict(expected), 120, "exact counts")


def test_plain_http_and_a_client_without_the_ca_get_nothing(https_cluster: Cluster) -> None:
    address = urlsplit(https_cluster.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as s:
        s.sendall(b"GET /api/v1/list HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = s.recv(65536)
    assert b"topologies" not in answer
    result = subprocess.run([sys.executable, "-m", "streamflow.cli", "list", "--nimbus", https_cluster.url,
                             "--token", TOKEN], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
