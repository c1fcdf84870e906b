"""``streamflow`` as a user runs it: a real process, its exit code, stdout and stderr."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from cluster import wait_for
from commands import ROOT, assert_one_line_error, streamflow

WORDCOUNT = ROOT / "topologies" / "wordcount.py"


def test_version_and_help() -> None:
    version = streamflow("--version")
    assert version.returncode == 0 and version.stdout.startswith("streamflow ")
    for args in (["--help"], ["local", "--help"]):
        result = streamflow(*args)
        assert result.returncode == 0 and "usage: streamflow" in result.stdout


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(streamflow("local", str(tmp_path / "nope.py")), "no such topology file")


def test_file_that_does_not_parse(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def build(config):\n    return (\n")
    assert_one_line_error(streamflow("local", str(bad)), "bad.py:", "syntax error")


def test_file_that_raises_at_import(tmp_path: Path) -> None:
    bad = tmp_path / "raises.py"
    bad.write_text("import no_such_module_here\n")
    assert_one_line_error(streamflow("local", str(bad)), "ModuleNotFoundError", "no_such_module_here")


def test_file_without_a_topology(tmp_path: Path) -> None:
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    assert_one_line_error(streamflow("local", str(empty)), "defines no topology", "build(config)")


def test_build_that_returns_something_else(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def build(config):\n    return 42\n")
    assert_one_line_error(streamflow("local", str(wrong)), "returned int")


CYCLIC = ROOT / "tests" / "topologies" / "cyclic" / "cyclic.py"


def test_invalid_topology() -> None:
    assert_one_line_error(streamflow("local", str(CYCLIC)), "cyclic", "cycle a -> b -> a")


@pytest.mark.parametrize("option", ["novalue", "=x"])
def test_malformed_config_option(option: str) -> None:
    assert_one_line_error(streamflow("local", str(WORDCOUNT), "-c", option), "malformed -c")


def test_config_value_of_the_wrong_type() -> None:
    result = streamflow("local", str(WORDCOUNT), "-c", "topology.message.timeout.secs=soon")
    assert_one_line_error(result, "topology.message.timeout.secs", "'soon'")


@pytest.mark.parametrize("option, needle", [("input.path=/nonexistent/in.txt", "cannot read /nonexistent/in.txt"),
                                            ("output.path=/nonexistent/out.jsonl",
                                             "cannot write /nonexistent/out.jsonl")])
def test_a_file_that_cannot_be_opened_fails_the_run_in_one_line(option: str, needle: str) -> None:
    result = streamflow("local", str(WORDCOUNT), "-c", option)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    *warnings, failed = result.stderr.strip().splitlines()  # each task's error log, then the verdict
    assert warnings and all(f"StreamflowError: {needle}: No such file or directory" in w for w in warnings)
    assert failed.startswith("streamflow: failed: component ") and needle in failed


@pytest.mark.parametrize("option, needle", [("kafka.stop_at_end=False", "true or false"),
                                            ("kafka.quotas=notjson", "an object {client id:")])
def test_kafka_config_values_are_checked_before_anything_runs(option: str, needle: str) -> None:
    # Refused before a spout opens: no broker is needed to tell, and none is asked.
    result = streamflow("local", str(WORDCOUNT), "-c", "kafka.bootstrap=127.0.0.1:9", "-c", option)
    assert_one_line_error(result, f"config {option.split('=')[0]!r}", needle)


@pytest.mark.parametrize("variable, value, args, needle", [
    ("STREAMFLOW_LOG_LEVEL", "verbose", ["local", str(WORDCOUNT)],
     "streamflow: error: argument --log-level: invalid level 'verbose'"),
    ("STREAMFLOW_PORT", "http", ["nimbus", "--zk", "127.0.0.1:9"],
     "streamflow nimbus: error: argument --port: invalid int value: 'http'"),
])
def test_a_bad_value_in_the_environment_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, variable: str,
                                                         value: str, args: list[str], needle: str) -> None:
    """Checked as the same value on the command line is (before, a traceback at start)."""
    monkeypatch.setenv(variable, value)
    result = streamflow(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(needle), result.stderr


@pytest.mark.parametrize("reply, needle", [
    (b"garbage\r\n\r\n", "did not answer in HTTP (BadStatusLine): is that address a nimbus?"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", "answered with something that is not JSON"),
])
def test_an_address_that_is_not_a_nimbus_is_told_in_one_line(reply: bytes, needle: str) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"

        def answer() -> None:
            peer, _ = server.accept()
            with peer:
                peer.recv(65536)
                peer.sendall(reply)

        replier = threading.Thread(target=answer)
        replier.start()
        result = streamflow("list", "--nimbus", address)
        replier.join(10)
    assert_one_line_error(result, f"nimbus at http://{address} ", needle)


def test_wordcount_on_the_sample_prints_the_top_ten() -> None:
    result = streamflow("local", str(WORDCOUNT))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 10
    assert lines[0].split() == ["25", "the"]
    for name in ("sentences", "split", "count", "top", "__checkpoint"):
        assert name in result.stderr  # the per-component summary
    assert "__acker" not in result.stderr  # checkpointed: its trees complete at commit
    assert "finished in" in result.stderr


def test_wordcount_counts_exactly_on_100k_lines(tmp_path: Path) -> None:
    rng = random.Random(3)
    vocabulary = [f"word{i}" for i in range(2000)]
    expected: Counter[str] = Counter()
    source, output = tmp_path / "in.txt", tmp_path / "out.jsonl"
    with source.open("w") as f:
        for _ in range(100_000):
            words = rng.choices(vocabulary, k=rng.randint(1, 8))
            expected.update(words)
            f.write(" ".join(words) + "\n")
    result = streamflow("local", str(WORDCOUNT), "-c", f"input.path={source}",
                        "-c", f"output.path={output}", timeout=600)
    assert result.returncode == 0, result.stderr
    final: dict[str, int] = {}
    lines = 0
    with output.open() as f:
        for line in f:
            record = json.loads(line)  # every line whole, though two sink tasks append
            lines += 1
            final[record["word"]] = max(final.get(record["word"], 0), record["count"])
    assert final == dict(expected)
    assert lines == sum(expected.values())  # no replays: each word written once


ENDLESS = """
from itertools import count
from streamflow import Spout, TopologyBuilder
from streamflow_connectors.files import JsonLinesSink

class Numbers(Spout):
    outputs = ["n"]
    def open(self, config, context):
        self.numbers = count()
    def next_tuple(self):
        n = next(self.numbers)
        self.emit((n,), msg_id=n)

def build(config):
    b = TopologyBuilder("endless")
    b.set_spout("numbers", Numbers())
    b.set_bolt("sink", JsonLinesSink(config["output.path"])).shuffle_grouping("numbers")
    return b.build()
"""


@pytest.mark.parametrize("how", ["interrupt", "timeout"])
def test_endless_topology_stops_cleanly(tmp_path: Path, how: str) -> None:
    topology, output = tmp_path / "endless.py", tmp_path / "out.jsonl"
    topology.write_text(ENDLESS)
    cmd = [sys.executable, "-m", "streamflow.cli", "local", str(topology), "-c", f"output.path={output}"]
    if how == "timeout":
        cmd += ["--timeout", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if how == "interrupt":
            def written() -> bool:
                assert proc.poll() is None, "streamflow local ended before writing"
                return output.exists() and output.stat().st_size > 0

            wait_for(written, 60, "the first output", every=0.05)
            proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "Traceback" not in stderr
    assert proc.returncode == (130 if how == "interrupt" else 0), stderr
    assert ("interrupted in" if how == "interrupt" else "timeout in") in stderr
    numbers = [json.loads(line)["n"] for line in output.read_text().splitlines()]
    assert numbers and len(set(numbers)) == len(numbers)
