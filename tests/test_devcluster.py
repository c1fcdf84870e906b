"""``streamflow dev-cluster``: a whole cluster on one machine, as a newcomer starts it."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import psutil
from cluster import wait_for

ROOT = Path(__file__).resolve().parent.parent
WORDCOUNT = ROOT / "topologies" / "wordcount.py"


def streamflow(*args: str, cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamflow.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def first_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The process's first line of stdout, read by a thread so that the wait has a deadline;
    its stderr in the failure if it ends without one."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    line = lines.get(timeout=timeout)
    assert line, f"exited with {process.wait()}: {process.stderr.read() if process.stderr else ''}"
    return line


def test_a_dev_cluster_runs_a_topology_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    # Default ports and data directory, from a directory of its own, as a newcomer runs it.
    dev = subprocess.Popen([sys.executable, "-m", "streamflow.cli", "dev-cluster", "--supervisors", "2",
                            "--slots", "2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        export = first_line(dev, timeout=120)
        assert export.startswith("export STREAMFLOW_NIMBUS=http://127.0.0.1:8080"), export
        children = psutil.Process(dev.pid).children(recursive=True)
        assert len(children) >= 4  # ZooKeeper, nimbus and two supervisors
        sentences = tmp_path / "sentences.txt"
        sentences.write_text("the cow jumped over the moon\nthe moon was full\n" * 500)
        out = tmp_path / "counts.jsonl"
        env = dict(os.environ, STREAMFLOW_NIMBUS=export.split("=", 1)[1].strip())
        submitted = streamflow("submit", str(WORDCOUNT), "--name", "wc", "--workers", "2",
                               "-c", f"input.path={sentences}", "-c", f"output.path={out}", cwd=tmp_path, env=env)
        assert submitted.returncode == 0, submitted.stderr
        expected = Counter("the cow jumped over the moon the moon was full".split())
        expected = Counter({word: n * 500 for word, n in expected.items()})

        def counts() -> dict[str, int]:
            best: dict[str, int] = {}
            for line in out.read_text().splitlines() if out.exists() else []:
                record = json.loads(line)
                best[record["word"]] = max(best.get(record["word"], 0), record["count"])
            return best

        wait_for(lambda: counts() == dict(expected), 120, "exact counts from the dev cluster")
        assert (tmp_path / "streamflow-dev" / "supervisor-0.log").exists()
        workers = psutil.Process(dev.pid).children(recursive=True)
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=90) == 0
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()


def test_a_taken_port_is_refused_in_one_line_naming_the_option(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = streamflow("dev-cluster", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"streamflow: error: port {port} is taken by another process: change --port"]


def test_without_zookeeper_it_says_in_one_line_how_to_get_one(tmp_path: Path) -> None:
    env = dict(os.environ, ZOOKEEPER_HOME=str(tmp_path / "no-zookeeper"))
    result = streamflow("dev-cluster", cwd=tmp_path, env=env)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "ZOOKEEPER_HOME" in line and "no lib/*.jar" in line
    missing = streamflow("dev-cluster", "--zk-jar", str(tmp_path / "zookeeper.jar"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such file" in missing.stderr
