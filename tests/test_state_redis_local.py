"""The word count with its state in a real Redis, in local mode through the CLI: what a
user meets when Redis is not there yet, and a second run that resumes from the first."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from commands import ROOT, summary_rows
from redis_server import RedisServer, unique_topology
from servers import free_port

WORDCOUNT = str(ROOT / "topologies" / "wordcount.py")


def words_file(path: Path, lines: int) -> Counter[str]:
    words = [f"w{i}" for i in range(50)]
    expected: Counter[str] = Counter()
    with path.open("w") as f:
        for n in range(lines):
            line = [words[(n * 7 + k) % 50] for k in range(1 + n % 4)]
            expected.update(line)
            f.write(" ".join(line) + "\n")
    return expected


def final_counts(path: Path) -> dict[str, int]:
    best: dict[str, int] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        best[record["word"]] = max(best.get(record["word"], 0), record["count"])
    return best


def local(tmp_path: Path, source: Path, out: Path, url: str, namespace: str) -> subprocess.Popen[str]:
    """``streamflow local`` of the word count with redis state, started from ``tmp_path``."""
    return subprocess.Popen(
        [sys.executable, "-m", "streamflow.cli", "local", WORDCOUNT, "-c", f"input.path={source}",
         "-c", f"output.path={out}", "-c", "topology.state.provider=redis",
         "-c", f"topology.state.redis.url={url}", "-c", f"topology.state.namespace={namespace}",
         "-c", "topology.state.checkpoint.interval.ms=100"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_redis_unreachable_at_start_stops_nothing_for_good_and_loses_nothing(tmp_path: Path) -> None:
    source, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    expected = words_file(source, 3000)
    port = free_port()
    run = local(tmp_path, source, out, f"redis://127.0.0.1:{port}/0", unique_topology("wc"))
    try:
        assert run.stderr is not None
        deadline = time.monotonic() + 30
        seen = ""
        while "Connection refused" not in seen and "connecting to" not in seen:
            assert time.monotonic() < deadline, f"no error about Redis within 30 s: {seen}"
            seen += run.stderr.readline()
        assert "state provider" in seen and "Traceback" not in seen, seen
        assert not out.exists() or final_counts(out) == {}  # nothing counted without state
        with RedisServer(tmp_path / "redis", port=port):
            stdout, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 0, stderr
    assert final_counts(out) == dict(expected)
    assert summary_rows(stderr)["sentences"][5] == "3000", stderr  # every sentence acked


def test_a_second_run_under_the_same_namespace_resumes_instead_of_counting_again(
        redis_server: RedisServer, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    expected = words_file(source, 2000)
    namespace = unique_topology("wc")
    for run_number in (1, 2):
        out = tmp_path / f"out{run_number}.jsonl"
        run = local(tmp_path, source, out, redis_server.url, namespace)
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr
        if run_number == 1:
            assert final_counts(out) == dict(expected)
        else:  # the spout seeks to where the first run's last checkpoint left it: at the end
            assert not out.exists() or final_counts(out) == {}, "the second run counted the file again"
    with redis_server.client() as client:
        stored = client.get(f"streamflow:{namespace}:checkpoint")
    assert stored is not None and json.loads(stored)["positions"]["sentences"]
