"""Workers of a cluster whose supervisors have ``--tls-cert``, ``--tls-key`` and
``--tls-ca``: the files reach each worker on its command line, its links run over TLS, and
a 2-worker word count counts exactly. Wrong TLS options are one line at the
supervisor's start, not workers failing in a loop."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import ROOT, Cluster, wait_for
from test_cluster import final_counts, words_input
from test_link_security import write_certificates
from zookeeper import ZooKeeperServer

from streamflow.errors import StreamflowError
from streamflow.transport import tls
from streamflow.worker_command import TlsFiles, WorkerCommand
from streamflow.worker_slot import tls_files


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[Path, Path, Path]:
    (tmp_path / "tls").mkdir()
    return write_certificates(tmp_path / "tls")


@pytest.fixture
def tls_cluster(zookeeper: ZooKeeperServer, zk_root: str, tmp_path: Path,
                certificates: tuple[Path, Path, Path]) -> Iterator[Cluster]:
    cert, key, ca = certificates
    c = Cluster(zookeeper.hosts, zk_root, tmp_path / "cluster", nimbus_count=1, supervisors=2, slots=1,
                supervisor_settings={"tls-cert": str(cert), "tls-key": str(key), "tls-ca": str(ca)})
    c.start()
    yield c
    c.stop()


def test_word_count_on_two_workers_over_tls_counts_exactly(tls_cluster: Cluster, tmp_path: Path,
                                                          certificates: tuple[Path, Path, Path]) -> None:
    source, expected = words_input(tmp_path, 2000)
    out = tmp_path / "counts.jsonl"
    result = tls_cluster.cli("submit", str(ROOT / "topologies" / "wordcount.py"), "--name", "tls",
                             "--workers", "2", "-c", f"input.path={source}", "-c", f"output.path={out}")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: final_counts(out) == dict(expected), 120, "exact counts over TLS links")
    pids = tls_cluster.worker_pids()
    assert len(pids) == 2
    _, client = tls.contexts(*certificates)
    for port, pid in pids.items():
        command = WorkerCommand.from_argv(Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0"))
        assert command is not None and command.tls == tuple(str(path) for path in certificates)
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=10, context=client) as answer:
            assert b"streamflow_" in answer.read()  # the slot port speaks TLS


@pytest.mark.parametrize("options, error", [
    (["--tls-cert", "cert.pem"], "give --tls-cert, --tls-key and --tls-ca together"),
    (["--tls-cert", "missing.pem", "--tls-key", "missing.key", "--tls-ca", "ca.pem"], "TLS certificate"),
])
def test_wrong_tls_options_are_one_line_at_start(tmp_path: Path, options: list[str], error: str) -> None:
    command = [sys.executable, "-m", "streamflow.cli", "supervisor", "--zk", "127.0.0.1:1", *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and error in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tls_files_are_made_absolute_and_checked(tmp_path: Path, certificates: tuple[Path, Path, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert tls_files(None, None, None) is None
    files = tls_files("tls/worker.pem", "tls/worker.key", "tls/ca.pem")
    assert files == TlsFiles(*(str(path) for path in certificates))
    with pytest.raises(StreamflowError, match="TLS CA"):
        tls_files("tls/worker.pem", "tls/worker.key", "tls/worker.key")
