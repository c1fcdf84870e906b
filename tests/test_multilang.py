"""Storm's multilang protocol: ShellBolt and ShellSpout, and streamparse projects run
unchanged by ``streamflow local`` with no JVM.

The components are real pystorm and streamparse ones in processes of their own:
tests/multilang/wordcount is ``sparse quickstart``'s project as streamparse 5.0.1
generates it, tests/multilang/features a project with named and direct streams, tick
tuples and msgpack, tests/multilang/components/upper.py a pystorm bolt. Every test
checks that no component process outlives its run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import msgpack
import psutil
import pytest
from cluster import wait_for
from commands import summary_rows

from streamflow import TopologyBuilder, run_local
from streamflow.executor import TaskFailed
from streamflow.multilang import ShellBolt, ShellSpout
from streamflow.multilang.protocol import JsonCodec, MsgpackCodec
from streamflow.testing import CollectBolt, Ledger, ListSpout

HERE = Path(__file__).resolve().parent / "multilang"
QUICKSTART = HERE / "wordcount"
FEATURES = HERE / "features"
UPPER = HERE / "components" / "upper.py"
NODE = HERE / "node"
SHOUT = HERE / "shout" / "shout.py"


# -- the wire format ------------------------------------------------------------------


def test_json_lines_that_are_not_protocol_are_output_and_the_messages_still_arrive() -> None:
    codec = JsonCodec()
    data = (b'hello\n{"command": "emit", "tuple": ["a"]}\nend\n{"not": "a message"}\n'
            b'{"command": "ack", "id": "1"}\nend\n[1, 2]\nend\n{\'py\': 1}\n{"command": "sync"}\nend\n')
    messages, output = codec.feed(data)
    assert messages == [{"command": "emit", "tuple": ["a"]}, {"command": "ack", "id": "1"}, {"command": "sync"}]
    assert output == ["hello", '{"not": "a message"}', "[1, 2]", "end", "{'py': 1}"]


def test_json_messages_split_over_lines_and_reads_are_put_back_together() -> None:
    codec = JsonCodec()
    data = b'{"command": "log",\n "msg": "two\\nlines"}\nend\n{"command": "sync"}\nend\nlast words'
    messages, output = [], []
    for i in range(len(data)):  # a byte per read
        m, o = codec.feed(data[i:i + 1])
        messages += m
        output += o
    assert messages == [{"command": "log", "msg": "two\nlines"}, {"command": "sync"}]
    assert output == [] and codec.rest() == ["last words"]


def test_msgpack_messages_and_printed_text_are_told_apart() -> None:
    codec = MsgpackCodec()
    data = msgpack.packb({"command": "emit", "tuple": [1]}) + b"printed\n" + msgpack.packb({"command": "sync"})
    messages, output = codec.feed(data[:5])
    assert messages == []
    messages, output = codec.feed(data[5:])
    assert messages == [{"command": "emit", "tuple": [1]}, {"command": "sync"}]
    assert output == ["printed"]
    head = codec.tuple_head("split", "default", 3)
    assert msgpack.unpackb(codec.encode_tuple(head, ["x", 1], "7")) == {
        "comp": "split", "stream": "default", "task": 3, "tuple": ["x", 1], "id": "7"}


# -- ShellBolt and ShellSpout in the native API --------------------------------------


def component_processes(marker: str) -> list[psutil.Process]:
    """Processes whose command line holds ``marker`` (a fixture's path or class)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "pid"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["pid"] != os.getpid() and any(marker in part for part in cmdline):
            found.append(proc)
    return found


@pytest.fixture
def no_orphans() -> Iterator[None]:
    """Fails the test if a component process of the fixtures outlives it."""
    yield
    left = component_processes(str(UPPER)) + component_processes(str(HERE))
    left += [p for p in psutil.Process().children(recursive=True) if "streamparse_run" in " ".join(p.cmdline())]
    assert not left, [p.cmdline() for p in left]


def upper_topology(rows: int, ledger: Ledger, *, parallelism: int = 2, serializer: str = "json",
                   config: dict[str, Any] | None = None) -> Any:
    builder = TopologyBuilder("upper")
    builder.set_spout("words", ListSpout([(f"w{i}",) for i in range(rows)], ["word"], ledger))
    builder.set_bolt("upper", ShellBolt(sys.executable, [str(UPPER), serializer], outputs=["word"],
                                               serializer=serializer),
                     parallelism).shuffle_grouping("words")
    builder.set_bolt("collect", CollectBolt(ledger)).shuffle_grouping("upper")
    return builder.build({"topology.max.spout.pending": 200, **(config or {})})


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_a_native_spout_feeds_a_multilang_bolt(serializer: str, no_orphans: None) -> None:
    ledger = Ledger()
    run = run_local(upper_topology(3000, ledger, serializer=serializer), timeout=60)
    assert run.outcome == "finished"
    assert sorted(ledger.acked) == list(range(3000)) and not ledger.failed
    received = sorted(tup.values[0] for _, tup in ledger.received)
    assert received == sorted(f"W{i}" for i in range(3000))
    upper = run.component("upper")
    assert (upper.tasks, upper.executed, upper.acked, upper.errors) == (2, 3000, 3000, 0)


def test_a_line_a_component_writes_to_stdout_is_logged_and_the_protocol_goes_on(
        caplog: pytest.LogCaptureFixture, no_orphans: None) -> None:
    ledger = Ledger()
    with caplog.at_level("INFO", logger="streamflow.multilang"):
        run = run_local(upper_topology(200, ledger, parallelism=1, config={"test.print": True}), timeout=60)
    assert run.outcome == "finished" and sorted(ledger.acked) == list(range(200))
    assert run.component("upper").errors == 0
    printed = [r.getMessage() for r in caplog.records if "output of pid" in r.getMessage()]
    assert len(printed) == 200 and printed[0].endswith("not protocol: w0")
    assert any("upper ready in task" in r.getMessage() and r.levelname == "INFO" for r in caplog.records)


def run_in_thread(topology: Any, timeout: float) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def target() -> None:
        result["run"] = run_local(topology, timeout=timeout)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


def test_a_bolt_that_holds_tuples_until_a_tick_gets_more_than_max_pending_of_them(no_orphans: None) -> None:
    ledger = Ledger()
    builder = TopologyBuilder("batching")
    builder.set_spout("words", ListSpout([(f"w{i % 7}",) for i in range(500)], ["word"], ledger))
    batching = ShellBolt(sys.executable, str(HERE / "components" / "batching.py"), outputs=["word", "count"])
    builder.set_bolt("batch", batching, config={"topology.tick.tuple.freq.secs": 0.2}).shuffle_grouping("words")
    builder.set_bolt("collect", CollectBolt(ledger)).shuffle_grouping("batch")
    topology = builder.build({"topology.shellbolt.max.pending": 10, "topology.max.spout.pending": 1000})
    run = run_local(topology, timeout=30)
    assert run.outcome == "finished" and sorted(ledger.acked) == list(range(500)) and not ledger.failed
    counts: dict[str, int] = {}
    for _, tup in ledger.received:
        counts[tup.values[0]] = counts.get(tup.values[0], 0) + tup.values[1]
    assert counts == {f"w{k}": len(range(k, 500, 7)) for k in range(7)}
    assert len(ledger.received) < 100  # batches of many tuples, not one per tick


def test_kill_9_of_a_component_process_fails_its_tuples_which_are_replayed_and_it_comes_back(
        no_orphans: None) -> None:
    ledger = Ledger()
    topology = upper_topology(1000, ledger, config={"test.sleep": 0.002, "topology.message.timeout.secs": 30})
    thread, result = run_in_thread(topology, timeout=60)
    wait_for(lambda: len(component_processes(str(UPPER))) == 2, 20, "both bolt processes")
    first = {p.pid for p in component_processes(str(UPPER))}
    wait_for(lambda: len(ledger.received) >= 100, 20, "tuples through the bolt")
    victim = sorted(first)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(component_processes(str(UPPER))) == 2 and
               victim not in {p.pid for p in component_processes(str(UPPER))}, 20, "a new process")
    thread.join(60)
    run = result["run"]
    assert run.outcome == "finished"
    assert sorted(ledger.acked) == list(range(1000))
    assert ledger.failed and run.component("words").replayed >= 1
    upper = run.component("upper")
    assert upper.errors >= 1 and "was killed by SIGKILL" in upper.last_error.message


def test_a_component_that_stops_answering_is_killed_after_the_subprocess_timeout(
        tmp_path: Path, no_orphans: None) -> None:
    ledger = Ledger()
    builder = TopologyBuilder("hang")
    builder.set_spout("words", ListSpout([("a",), ("hang",), ("b",)], ["word"], ledger))
    builder.set_bolt("upper", ShellBolt(sys.executable, str(UPPER), outputs=["word"])).shuffle_grouping("words")
    builder.set_bolt("collect", CollectBolt(ledger)).shuffle_grouping("upper")
    topology = builder.build({"test.hang_file": str(tmp_path / "hung"), "topology.subprocess.timeout.secs": 1,
                              "topology.message.timeout.secs": 30})
    started = time.monotonic()
    run = run_local(topology, timeout=30)
    assert run.outcome == "finished" and sorted(ledger.acked) == [0, 1, 2]
    assert ledger.failed[1] >= 1
    error = run.component("upper").last_error
    assert error is not None and "sent nothing for 1 s (topology.subprocess.timeout.secs): killed" in error.message
    assert time.monotonic() - started < 10


def test_an_error_a_component_reports_is_the_tasks_error_and_its_tuple_is_replayed(
        tmp_path: Path, no_orphans: None) -> None:
    ledger = Ledger()
    builder = TopologyBuilder("boom")
    builder.set_spout("words", ListSpout([("a",), ("boom",), ("b",)], ["word"], ledger))
    builder.set_bolt("upper", ShellBolt(sys.executable, str(UPPER), outputs=["word"])).shuffle_grouping("words")
    builder.set_bolt("collect", CollectBolt(ledger)).shuffle_grouping("upper")
    run = run_local(builder.build({"test.raise_file": str(tmp_path / "raised")}), timeout=30)
    assert run.outcome == "finished" and sorted(ledger.acked) == [0, 1, 2], ledger.failed
    assert ledger.failed[1] >= 1 and set(ledger.failed) <= {1, 2}  # and what the dying process had
    assert sorted(tup.values[0] for _, tup in ledger.received) == ["A", "B", "BOOM"]
    upper = run.component("upper")
    assert upper.errors == 2  # the error it reported, then its exit (pystorm exits after an error)
    assert upper.last_error is not None and "exited with code 1" in upper.last_error.message


def test_kill_9_of_a_shell_spout_process_starts_another(no_orphans: None) -> None:
    ledger = Ledger()
    builder = TopologyBuilder("sentences")
    spout = ShellSpout("streamparse_run", "features.Sentences", outputs=["sentence"], cwd=FEATURES / "src")
    builder.set_spout("sentences", spout)
    builder.set_bolt("collect", CollectBolt(ledger)).shuffle_grouping("sentences")
    thread, result = run_in_thread(builder.build(), timeout=4)
    wait_for(lambda: len(ledger.received) == 300, 20, "the first process's sentences")
    (victim,) = component_processes("features.Sentences")
    victim.kill()
    wait_for(lambda: len(ledger.received) == 600, 20, "the next process's sentences")
    thread.join(30)
    sentences = result["run"].component("sentences")
    assert (sentences.emitted, sentences.errors) == (600, 1)
    assert sentences.last_error is not None and "was killed by SIGKILL" in sentences.last_error.message


def test_a_component_that_cannot_start_fails_its_task_in_one_line(no_orphans: None) -> None:
    builder = TopologyBuilder("broken")
    builder.set_spout("words", ListSpout([("a",)], ["word"], Ledger()))
    builder.set_bolt("upper", ShellBolt(sys.executable, "-c", outputs=["word"])).shuffle_grouping("words")
    with pytest.raises(TaskFailed, match="exited before the handshake"):
        run_local(builder.build(), timeout=30)
    builder = TopologyBuilder("missing")
    builder.set_spout("words", ListSpout([("a",)], ["word"], Ledger()))
    builder.set_bolt("upper", ShellBolt("no-such-command-here", outputs=["word"])).shuffle_grouping("words")
    with pytest.raises(TaskFailed, match="'no-such-command-here' not found on PATH"):
        run_local(builder.build(), timeout=30)


def test_a_shell_spout_feeds_native_bolts(no_orphans: None) -> None:
    ledger = Ledger()
    builder = TopologyBuilder("sentences")
    spout = ShellSpout("streamparse_run", "features.Sentences", outputs=["sentence"], cwd=FEATURES / "src")
    builder.set_spout("sentences", spout)
    builder.set_bolt("collect", CollectBolt(ledger)).shuffle_grouping("sentences")
    run = run_local(builder.build(), timeout=3)
    assert run.outcome == "timeout"  # a multilang spout never says it is exhausted
    sentences = run.component("sentences")
    assert (sentences.emitted, sentences.acked, sentences.failed, sentences.errors) == (300, 300, 0, 0)
    assert len(ledger.received) == 300


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_a_nodejs_bolt_written_against_storms_storm_js(caplog: pytest.LogCaptureFixture, no_orphans: None) -> None:
    ledger = Ledger()
    sentences = ["the cow jumped over the moon", "an apple a day keeps the doctor away"]
    builder = TopologyBuilder("node")
    builder.set_spout("sentences", ListSpout([(s,) for s in sentences], ["sentence"], ledger))
    split = ShellBolt("node", "splitsentence.js", outputs=["word"], cwd=NODE)
    builder.set_bolt("split", split, 2).shuffle_grouping("sentences")
    builder.set_bolt("collect", CollectBolt(ledger)).shuffle_grouping("split")
    topology = builder.build()
    with caplog.at_level("INFO", logger="streamflow.multilang"):
        run = run_local(topology, timeout=30)
    assert run.outcome == "finished" and sorted(ledger.acked) == [0, 1] and not ledger.failed
    assert sorted(tup.values[0] for _, tup in ledger.received) == sorted(" ".join(sentences).split())
    (collect_task,) = topology.task_layout()["collect"]  # the task ids storm.js asked for, each emit
    logged = [r.getMessage() for r in caplog.records if "sent to task ids" in r.getMessage()]
    assert len(logged) == len(" ".join(sentences).split())
    assert all(line.endswith(f"sent to task ids - {collect_task}") for line in logged)
    assert run.component("split").errors == 0


# -- streamparse projects through the CLI ---------------------------------------------


def copy_project(source: Path, tmp_path: Path) -> Path:
    project = tmp_path / source.name
    shutil.copytree(source, project, ignore=shutil.ignore_patterns("__pycache__"))
    return project


def streamflow(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamflow.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def processes_in(directory: Path) -> list[psutil.Process]:
    """Processes whose working directory is ``directory`` (a copied project's src/)."""
    found = []
    for proc in psutil.process_iter(["cwd"]):
        if proc.info["cwd"] and Path(proc.info["cwd"]) == directory:
            found.append(proc)
    return found


def test_the_quickstart_project_runs_unchanged_in_local_mode_from_another_directory(tmp_path: Path) -> None:
    project = copy_project(QUICKSTART, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = streamflow("--log-level", "INFO", "local", str(project / "topologies" / "wordcount.py"),
                        "--timeout", "4", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = summary_rows(result.stderr)
    spout, bolt = rows["word_spout"], rows["count_bolt"]
    assert spout[1:3] == ["spout", "1"] and int(spout[3]) >= 2000
    assert bolt[1:3] == ["bolt", "2"] and int(bolt[4]) >= 2000 and bolt[6] == "0"
    counted = re.findall(r"INFO streamflow\.multilang\.count_bolt: .* counted \[([\d,]+)\] words \[pid=(\d+)\]",
                         result.stderr)
    assert counted and len({pid for _, pid in counted}) == 2
    assert "timeout in" in result.stderr
    assert not processes_in(project / "src")


def test_describe_shows_a_streamparse_topology_as_streamflow_runs_it(tmp_path: Path) -> None:
    result = streamflow("describe", str(QUICKSTART / "topologies" / "wordcount.py"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert described["name"] == "wordcount"
    spout, bolt = described["components"]["word_spout"], described["components"]["count_bolt"]
    assert (spout["kind"], spout["parallelism"], spout["outputs"]) == ("spout", 1, {"default": ["word"]})
    assert (bolt["kind"], bolt["parallelism"]) == ("bolt", 2)
    assert bolt["inputs"] == [
        {"source": "word_spout", "stream": "default", "grouping": "fields", "fields": ["word"]}]
    assert bolt["class"] == "streamflow.multilang.bolt.ShellBolt"


def test_every_streamparse_grouping_maps_to_streamflows_and_par_per_environment(tmp_path: Path) -> None:
    project = copy_project(QUICKSTART, tmp_path)
    (project / "topologies" / "groupings.py").write_text(
        "from streamparse import Grouping, Topology\n"
        "from bolts.wordcount import WordCountBolt\n"
        "from spouts.words import WordSpout\n\n"
        "class Groupings(Topology):\n"
        "    config = {'topology.message.timeout.secs': 7}\n"
        "    words = WordSpout.spec(par={'prod': 3})\n"
        "    by_word = WordCountBolt.spec(inputs={words: Grouping.fields('word')})\n"
        "    everywhere = WordCountBolt.spec(inputs={words: Grouping.ALL}, par=2)\n"
        "    lowest = WordCountBolt.spec(inputs={words: Grouping.GLOBAL})\n"
        "    any_task = WordCountBolt.spec(inputs={words: Grouping.NONE})\n"
        "    local = WordCountBolt.spec(inputs={words: Grouping.LOCAL_OR_SHUFFLE},\n"
        "                               config={'topology.tick.tuple.freq.secs': 5})\n"
        "    shuffled = WordCountBolt.spec(inputs=[words])\n")
    result = streamflow("describe", str(project / "topologies" / "groupings.py"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    components = described["components"]
    groupings = {name: (c["inputs"][0]["grouping"], c["inputs"][0]["fields"])
                 for name, c in components.items() if c["kind"] == "bolt"}
    assert groupings == {"by_word": ("fields", ["word"]), "everywhere": ("all", []), "lowest": ("global", []),
                         "any_task": ("none", []), "local": ("local_or_shuffle", []), "shuffled": ("shuffle", [])}
    assert components["words"]["parallelism"] == 3 and components["everywhere"]["parallelism"] == 2
    assert described["name"] == "groupings" and described["config"]["topology.message.timeout.secs"] == 7
    assert described["config"]["pystorm.log.level"] == "info"  # config.json's env log level, for pystorm


def test_named_and_direct_streams_ticks_and_msgpack_of_a_streamparse_project(tmp_path: Path) -> None:
    project = copy_project(FEATURES, tmp_path)
    result = streamflow("--log-level", "INFO", "local", str(project / "topologies" / "features.py"),
                        "--timeout", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "-s msgpack features.Router" in result.stderr  # config.json's serializer
    assert "all 300 sentences acked" in result.stderr
    last: dict[str, tuple[int, int]] = {}
    for task, words, direct in re.findall(r"tally task=(\d+) words=(\d+) direct=(\d+)", result.stderr):
        last[task] = (int(words), int(direct))
    assert len(last) == 2, result.stderr  # both tally tasks got ticks
    assert sum(words for words, _ in last.values()) == 1300
    assert sorted(direct for _, direct in last.values()) == [0, 300]  # all to one task
    rows = summary_rows(result.stderr)
    assert rows["sentences"][3:7] == ["300", "-", "300", "0"]
    assert not processes_in(project / "src")


def test_java_components_are_refused_in_one_line(tmp_path: Path) -> None:
    project = copy_project(QUICKSTART, tmp_path)
    (project / "topologies" / "java.py").write_text(
        "from streamparse import Grouping, JavaBolt, Topology\n"
        "from spouts.words import WordSpout\n\n"
        "class Java(Topology):\n"
        "    word_spout = WordSpout.spec()\n"
        "    count = JavaBolt.spec(full_class_name='org.example.Count', args_list=[],\n"
        "                          inputs={word_spout: Grouping.SHUFFLE}, outputs=['word'])\n")
    result = streamflow("local", str(project / "topologies" / "java.py"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "streamflow: error: topology 'java': component 'count' is a JavaBolt: streamflow runs no JVM, so Java "
        "components cannot run (write it in Python, or as a multilang component in any language)"]


def read_until(stream: Any, pattern: str, timeout: float, seen: list[str]) -> re.Match[str]:
    """Read lines of ``stream`` (kept in ``seen``) until one matches ``pattern``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen[-20:])}")


def test_kill_9_of_a_quickstart_component_process_restarts_it_and_counting_goes_on(tmp_path: Path) -> None:
    project = copy_project(QUICKSTART, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "streamflow.cli", "--log-level", "INFO", "local",
                             str(project / "topologies" / "wordcount.py"), "--timeout", "8"],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    seen: list[str] = []
    try:
        victim = int(read_until(proc.stderr, r"counted \[[\d,]+\] words \[pid=(\d+)\]", 30, seen).group(1))
        os.kill(victim, signal.SIGKILL)
        restarted = read_until(proc.stderr, r"count_bolt: component process (\d+) started", 30, seen)
        new_pid = int(restarted.group(1))
        read_until(proc.stderr, rf"counted \[[\d,]+\] words \[pid={new_pid}\]", 30, seen)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(seen) + rest
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert re.search(rf"last error of count_bolt \(1 in all\): process: ComponentDied: component process {victim} "
                     r".* was killed by SIGKILL", stderr), stderr[-3000:]
    assert not processes_in(project / "src")


def test_ctrl_c_stops_a_streamparse_topology_and_its_component_processes(tmp_path: Path) -> None:
    project = copy_project(QUICKSTART, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "streamflow.cli", "--log-level", "INFO", "local",
                             str(project / "topologies" / "wordcount.py")],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    seen: list[str] = []
    try:
        read_until(proc.stderr, r"counted \[", 30, seen)
        assert len(processes_in(project / "src")) == 3
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "interrupted in" in rest and "Traceback" not in "".join(seen) + rest
    assert not processes_in(project / "src")


# -- on a cluster -----------------------------------------------------------------------


def test_a_multilang_bolt_on_a_two_worker_cluster_runs_in_the_workers_and_stops_with_them(
        cluster: Any, tmp_path: Path) -> None:
    source, out = tmp_path / "lines.txt", tmp_path / "out.jsonl"
    source.write_text("".join(f"line {i}\n" for i in range(2000)))
    result = cluster.cli("submit", str(SHOUT), "--name", "shout", "--workers", "2",
                         "-c", f"input.path={source}", "-c", f"output.path={out}")
    assert result.returncode == 0, result.stderr

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    wait_for(lambda: len(lines()) >= 2000, 120, "every line shouted")
    assert sorted(r["line"] for r in lines()) == sorted(f"LINE {i}" for i in range(2000))
    pids = {r["pid"] for r in lines()}
    workers = set(cluster.worker_pids().values())
    assert len(pids) == 2 and len(workers) == 2
    assert {psutil.Process(pid).ppid() for pid in pids} <= workers  # started by the workers
    cluster.kill_all()
    wait_for(lambda: not component_processes("shout_bolt.py"), 30, "the component processes gone")


def test_the_quickstart_project_runs_on_a_two_worker_cluster(cluster: Any, tmp_path: Path) -> None:
    # submit ships the whole project (src/, config.json, topologies/): each worker runs the
    # components as streamparse_run processes in its unpacked src/.
    project = copy_project(QUICKSTART, tmp_path)
    result = cluster.cli("submit", str(project / "topologies" / "wordcount.py"), "--name", "quickstart",
                         "--workers", "2")
    assert result.returncode == 0, result.stderr

    def counted() -> int:
        components = cluster.status("quickstart")["components"]
        return int(components.get("count_bolt", {}).get("acked", 0))

    wait_for(lambda: counted() >= 2000, 120, "words counted on the cluster")
    workers = set(cluster.worker_pids().values())
    runs = [p for p in component_processes("bolts.wordcount.WordCountBolt")]
    assert len(workers) == 2 and len(runs) == 2
    assert {psutil.Process(p.pid).ppid() for p in runs} <= workers
    assert all(Path(p.cwd()).name == "src" for p in runs)
    cluster.kill_all()
    wait_for(lambda: not [p for p in component_processes("streamparse_run") if p.is_running()], 30,
             "the component processes gone")
