"""What a user sees of a running topology on a real cluster: the status figures, each
worker's /metrics, the logs of every worker through ``streamflow logs``, the log level
changed at run time, and ``streamflow top``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from cluster import ROOT, Cluster, metric_samples, wait_for

OBSERVED = str(ROOT / "tests" / "topologies" / "observed" / "observed.py")
NAME = "observed"


@pytest.fixture(scope="module")
def running(shared_cluster: Cluster) -> Iterator[Cluster]:
    """The observed topology on 2 workers, for every test of this module."""
    c = shared_cluster
    result = c.cli("submit", OBSERVED, "--name", NAME, "--workers", "2", "-c", "rate=400",
                   "-c", "topology.message.timeout.secs=5")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: c.status(NAME)["components"]["numbers"]["acked"] > 500, 60, "acks")
    yield c
    c.kill_all()


def test_status_shows_rates_windows_capacity_latencies_and_replays(running: Cluster) -> None:
    status = running.status(NAME)
    numbers, check = status["components"]["numbers"], status["components"]["check"]
    assert check["inputs"] == [{"source": "numbers", "stream": "default", "grouping": "fields", "fields": ["n"]}]
    assert numbers["rate"] > 0 and check["rate"] > 0
    assert 0 < check["window"]["seconds"] <= status["uptime"] + 1
    assert check["window"]["executed"] <= check["executed"]
    assert check["capacity"] is not None and 0 <= check["capacity"] <= 1
    assert numbers["capacity"] is None
    assert check["execute_latency_ms"]["p99"] > 0 and numbers["complete_latency_ms"]["p50"] > 0
    # every 50th number fails once, and the spout emits it again
    wait_for(lambda: running.status(NAME)["components"]["numbers"]["replayed"] >= 5, 30, "replays")
    check = running.status(NAME)["components"]["check"]
    assert check["errors"] >= 5 and "multiple of 50" in check["last_error"]["message"]
    table = running.cli("status", NAME)
    assert table.returncode == 0 and "capacity" in table.stdout and "check" in table.stdout


def test_each_worker_serves_its_tasks_metrics_on_its_slot_port(running: Cluster) -> None:
    status = running.status(NAME)
    check_tasks = set()
    for worker in status["workers"]:
        samples = metric_samples(f"http://{worker['host']}:{worker['port']}")
        tasks = {dict(labels)["task"] for name, labels in samples if name == "streamflow_tuples_executed_total"}
        assert tasks == {str(t) for t in worker["tasks"]}  # its own tasks, one series each
        for name, labels in samples:
            if name == "streamflow_capacity":
                check_tasks.add(dict(labels)["task"])
                assert 0 <= samples[(name, labels)] <= 1
        assert any(name == "streamflow_inbox_tuples" for name, _ in samples)
        assert any(name == "streamflow_backpressure_seconds_total" for name, _ in samples)
    assert len(check_tasks) >= 2  # both check tasks (and the ackers) report a capacity
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://{status['workers'][0]['host']}:{status['workers'][0]['port']}/other",
                               timeout=10)


def logs(cluster: Cluster, *args: str) -> list[dict[str, Any]]:
    result = cluster.cli("logs", NAME, "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_logs_of_every_worker_with_task_context_and_a_component_filter(running: Cluster) -> None:
    lines = logs(running)
    workers = {w["slot"] for w in running.status(NAME)["workers"]}
    assert {line["worker"] for line in lines} == workers  # both workers, through their supervisors
    started = [line for line in lines if "runs tasks" in line["message"]]
    assert len(started) == 2 and all(line["topology"].startswith(NAME) for line in started)
    errors = logs(running, "--component", "check")
    assert errors and all(line["component"] == "check" for line in errors)
    assert any("multiple of 50" in line["message"] and isinstance(line["task"], int) for line in errors)
    times = [line["time"] for line in lines]
    assert times == sorted(times)  # merged across workers by time
    text = running.cli("logs", NAME, "--component", "check")
    assert text.returncode == 0 and "check[" in text.stdout


def test_set_log_level_reaches_running_workers_and_follow_prints_new_lines(running: Cluster) -> None:
    assert not any(line["level"] == "DEBUG" for line in logs(running))
    env = dict(running.env, STREAMFLOW_NIMBUS=running.url, STREAMFLOW_TOKEN=running.token or "")
    follow = subprocess.Popen([sys.executable, "-m", "streamflow.cli", "logs", NAME, "--follow",
                               "--component", "check"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert running.cli("set-log-level", NAME, "debug").returncode == 0
        assert running.status(NAME)["log_level"] == "DEBUG"
        assert follow.stdout is not None
        seen = []
        for line in follow.stdout:  # blocks until the follower prints; the test's timeout bounds it
            seen.append(line)
            if "DEBUG" in line and "checked a batch" in line:
                break
        assert "check[" in seen[-1]
    finally:
        follow.send_signal(signal.SIGINT)
        assert follow.wait(10) == 130
    assert running.cli("set-log-level", NAME, "info").returncode == 0
    refused = running.cli("set-log-level", NAME, "loud")
    assert refused.returncode == 2 and "invalid choice" in refused.stderr


def test_top_refreshes_the_table_until_ctrl_c(running: Cluster, tmp_path: Path) -> None:
    env = dict(running.env, STREAMFLOW_NIMBUS=running.url, STREAMFLOW_TOKEN=running.token or "")
    top = subprocess.Popen([sys.executable, "-m", "streamflow.cli", "top", NAME, "--watch", "0.2"],
                           env=env, stdout=subprocess.PIPE, text=True)
    assert top.stdout is not None
    headers = 0
    for line in top.stdout:
        headers += line.startswith("component ")
        if headers == 3:
            break
    top.send_signal(signal.SIGINT)
    assert top.wait(10) == 130
    assert headers == 3
