"""Wordcount on a real local cluster: throughput on 1, 2 and 4 workers (or more), complete
latency at half the peak rate, and recovery after ``kill -9`` of a worker.

    .venv/bin/python bench/cluster_wordcount.py [--lines 2000000] [--repeat 2] [--warmup 5]
        [--window 12] [--workers 1,2,4] [--supervisors 2] [--slots 2] [--scale]
        [--sink file|top] [--latency-fraction 0.5] [--latency-rate R] [--message-timeout 5]
        [--observe 15] [--skip latency,recovery] [-c KEY=VALUE ...] [--verbose] [--keep]

Starts its own cluster on 127.0.0.1 (one ZooKeeper from tests/zookeeper.py, one nimbus and
``--supervisors`` supervisors of ``--slots`` slots each from tests/cluster.py: 2 x 2 by
default, so at most 4 workers), generates its input (seeded random sentences of
``--words-per-line`` words from a Zipf-like vocabulary of 5000 words), and stops
everything at the end, on error and on Ctrl-C. Acking is on in every run (one acker per
worker, the default); ``-c`` values go to every topology. About 3.5 minutes with the
defaults.

1. Throughput: ``topologies/wordcount.py`` (parallelism as it declares: 1 spout, 2 split,
   2 count, 2 sink) on each worker count, ``--repeat`` times, the counts interleaved
   (1, 2, 4, 1, 2, 4) so that a slow spell of the machine does not hit one count only. The
   sink appends JSON lines to a temporary file (``--sink top``: wordcount's single
   top-words bolt instead). Once the spout acks, ``--warmup`` seconds are skipped; then
   sentences/s is the rise of the spout's ``acked`` counter over ``--window`` seconds, and
   words/s that times the words per sentence. Each topology is killed
   (``kill NAME --wait 0``) and its workers gone before the next starts. The ratios use
   the best run of each count (the median too is printed), relative to 1 worker.

   ``--scale`` is for many-core machines, where the one spout task would be the
   bottleneck and more workers could not show what they add: a run on W workers gives
   every component W tasks (``-c spout.parallelism=W``, and the same for split, count
   and sink), one of each per worker. The spout's tasks split the input file among
   themselves by byte ranges, so each line is still read once; a run is INVALID when
   one task's share ran out before the window ended.
2. Latency: ``bench/topologies/throttled_wordcount.py`` (the same bolts; the spout behind a
   token bucket) on 2 workers at ``--latency-fraction`` of the best 2-worker throughput;
   p50/p99 come from the rise of the spout's complete-latency histogram over the window.
   Each is the upper bound of its histogram bucket (buckets are 20% wide).
3. Recovery: wordcount on 2 workers at full speed with
   ``topology.message.timeout.secs=--message-timeout`` (5 s by default, so that trees lost
   with the worker are replayed soon); after ``--pre-kill`` seconds of steady rate, a worker
   that holds no spout task gets ``kill -9`` and the acked rate is followed for
   ``--observe`` seconds. Recovery is the time from the kill to the end of the first
   window of two heartbeat intervals (~2 s; one interval alone varies by +-20% at a steady
   rate), from the first heartbeat after the kill on, whose rate is >= 90% of the rate
   before the kill: about 2-3 s even if the kill cost nothing. The rate per heartbeat
   interval around the kill is printed too.

Counters come from worker heartbeats, written to ZooKeeper about once a second; ``status``
sums them but does not say when each was written, so a rate taken between two polls is off
by up to a poll interval. The script therefore reads the spout's heartbeats, with their
timestamps, from ZooKeeper every ``--poll`` seconds, and times every rate by the workers'
clocks; at the end of each run it checks its last figures against ``status --json``.

CPU use during each window is printed beside the figures, including what processes
outside the benchmark used: on a 2-core machine, 2 and 4 workers share two cores with
nimbus, the supervisors, ZooKeeper and anything else running, and the figures move with
that load. So does the machine itself: a virtual machine's core is not equally fast from
minute to minute (on the 2-core machine the issues are measured on, the same pure-Python
loop took from 0.30 to 0.47 s in eight runs a second apart). Before each run the script
times a fixed loop (``machine probe``, CPU milliseconds, lower is faster); compare two
runs' figures only beside their probes.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster import Cluster, wait_for  # noqa: E402  (tests/cluster.py)
from kazoo.exceptions import KazooException  # noqa: E402
from zookeeper import ZooKeeperServer  # noqa: E402  (tests/zookeeper.py)

from streamflow.stats import Histogram  # noqa: E402
from streamflow.zkstate import ClusterState  # noqa: E402

WORDCOUNT = ROOT / "topologies" / "wordcount.py"
THROTTLED = ROOT / "bench" / "topologies" / "throttled_wordcount.py"
SPOUT = "sentences"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- input


def generate(path: Path, lines: int, words_per_line: int, seed: int = 7) -> int:
    """Write ``lines`` sentences of ``words_per_line`` words drawn from a Zipf-like
    vocabulary of 5000 words; return the number of words written."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(5000)]
    cumulative = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocabulary))))
    chunk = 10_000
    with path.open("w") as f:
        for start in range(0, lines, chunk):
            n = min(chunk, lines - start)
            words = rng.choices(vocabulary, cum_weights=cumulative, k=n * words_per_line)
            f.write("\n".join(" ".join(words[i:i + words_per_line])
                              for i in range(0, len(words), words_per_line)))
            f.write("\n")
    return lines * words_per_line


# --------------------------------------------------------------------------- observing


@dataclass
class Beat:
    """The spout tasks' counters as of one heartbeat of the worker(s) that run them."""

    time: float  # the worker's clock (time.time()) when it wrote the heartbeat
    acked: int
    failed: int
    emitted: int
    histogram: Histogram
    most_emitted: int  # by one spout task: with several, one may run out of its share first


def rate(a: Beat, b: Beat) -> float:
    """Sentences acked per second between two heartbeats."""
    return (b.acked - a.acked) / (b.time - a.time)


class SpoutProbe:
    """Reads the spout tasks' heartbeats from ZooKeeper every ``poll`` seconds on a
    thread and keeps each new one, so that rates are timed by the workers' clocks."""

    def __init__(self, state: ClusterState, topology_id: str, spout_tasks: set[int], poll: float) -> None:
        self.state, self.topology_id, self.spout_tasks, self.poll = state, topology_id, spout_tasks, poll
        self.beats: list[Beat] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spout-probe", daemon=True)

    def __enter__(self) -> SpoutProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _read(self) -> Beat | None:
        times, acked, failed, emitted, most, histogram = [], 0, 0, 0, 0, Histogram()
        for beat in self.state.heartbeats(self.topology_id).values():
            mine = [s for s in beat.get("stats", []) if s["task"] in self.spout_tasks]
            if not mine:
                continue
            times.append(beat["time"])
            for s in mine:
                acked += s["acked"]
                failed += s["failed"]
                emitted += s["emitted"]
                most = max(most, s["emitted"])
                histogram.merge(Histogram.from_sparse(s["complete_latency"]))
        if not times:
            return None
        return Beat(max(times), acked, failed, emitted, histogram, most)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                beat = self._read()
            except KazooException:  # ZooKeeper busy a moment: read again at the next poll
                self.errors += 1
                beat = None
            if beat is not None and (not self.beats or beat.time > self.beats[-1].time):
                self.beats.append(beat)
            self._stop.wait(self.poll)

    def beat_after(self, when: float, timeout: float) -> Beat:
        """The first heartbeat written at or after ``when`` (wall clock); waits for it."""
        return wait_for(lambda: next((b for b in self.beats if b.time >= when), None), timeout,
                        "a spout heartbeat", every=0.05)

    def first_acks(self, timeout: float = 90.0) -> Beat:
        return wait_for(lambda: next((b for b in self.beats if b.acked > 0), None), timeout,
                        "the spout's first acked tuples", every=0.1)


CONTENDED = 0.25
"""CPUs that processes outside the benchmark may keep busy before a figure is flagged."""


@dataclass
class CpuUse:
    seconds: float  # of wall clock
    groups: dict[str, list[float]]  # CPU seconds per process, per group of processes
    others: float  # CPU seconds of every other process on the machine

    def cpus(self, group: str) -> float:
        return sum(self.groups[group]) / self.seconds

    @property
    def contended(self) -> str:
        """A warning when other processes took a share of the CPUs, else ''."""
        others = self.others / self.seconds
        return f"  CONTENDED: other processes kept {others:.2f} CPUs busy" if others > CONTENDED else ""

    def __str__(self) -> str:
        parts = []
        for name, used in self.groups.items():
            each = "+".join(f"{u / self.seconds:.2f}" for u in used) if len(used) > 1 else ""
            parts.append(f"{name} {sum(used) / self.seconds:.2f}" + (f" ({each})" if each else ""))
        parts.append(f"other processes {self.others / self.seconds:.2f}")
        return "CPUs busy: " + ", ".join(parts) + f" (of {os.cpu_count()})"


class CpuMeter:
    """CPU time used by groups of processes, and by the rest of the machine (/proc)."""

    @staticmethod
    def cpu(pid: int) -> float | None:
        """CPU seconds the process has used, or None if it is gone."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    @staticmethod
    def machine() -> float:
        """CPU seconds the whole machine has been busy (all CPUs, from /proc/stat)."""
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(values[:8]) - values[3] - values[4]) / CLOCK_TICKS  # less idle and iowait

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.start = {pid: self.cpu(pid) or 0.0 for pids in groups.values() for pid in pids}
        self.start_machine = self.machine()
        self.began = time.monotonic()

    def read(self, groups: dict[str, list[int]] | None = None) -> CpuUse:
        """CPU time since the meter started; ``groups`` (the same names) adds processes
        started meanwhile, such as a restarted worker. A process that died meanwhile is
        left out (its CPU time is lost with it)."""
        seconds = time.monotonic() - self.began
        used: dict[str, list[float]] = {}
        for name, pids in self.groups.items():
            every = dict.fromkeys([*pids, *(groups or {}).get(name, ())])
            now = [(pid, self.cpu(pid)) for pid in every]
            used[name] = [max(0.0, cpu - self.start.get(pid, 0.0)) for pid, cpu in now if cpu is not None]
        others = max(0.0, self.machine() - self.start_machine - sum(sum(u) for u in used.values()))
        return CpuUse(seconds, used, others)


# --------------------------------------------------------------------------- the cluster


class Bench:
    """The cluster, and submitting, observing and killing topologies on it."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.zookeeper: ZooKeeperServer | None = None
        self.cluster: Cluster | None = None
        self.state: ClusterState | None = None
        self.extra = [x for kv in args.config for x in ("-c", kv)]

    @contextmanager
    def running(self) -> Iterator[Bench]:
        try:
            began = time.monotonic()
            self.zookeeper = ZooKeeperServer(self.workdir / "zookeeper")
            self.zookeeper.start()
            root = f"/streamflow-bench-{os.getpid()}"
            self.cluster = Cluster(self.zookeeper.hosts, root, self.workdir / "cluster",
                                   nimbus_count=1, supervisors=self.args.supervisors, slots=self.args.slots)
            self.cluster.start()
            self.cluster.env["STREAMFLOW_LOG_LEVEL"] = "WARNING"  # for CLI calls: no INFO lines
            self.state = ClusterState(self.zookeeper.hosts, root)
            self.state.start()
            print(f"cluster: ZooKeeper {self.zookeeper.hosts}, 1 nimbus {self.cluster.url}, "
                  f"{self.args.supervisors} supervisors x {self.args.slots} slots; "
                  f"up in {time.monotonic() - began:.1f} s", flush=True)
            yield self
        finally:
            if self.state is not None:
                self.state.stop()
            if self.cluster is not None:
                self.cluster.stop()  # nimbus, supervisors and any worker left
            if self.zookeeper is not None:
                self.zookeeper.stop()

    def cli(self, *args: str) -> str:
        assert self.cluster is not None
        result = self.cluster.cli(*args)
        if result.returncode != 0:
            raise RuntimeError(f"streamflow {' '.join(args[:2])} failed: {result.stderr.strip()}")
        return result.stdout

    def submit(self, name: str, file: Path, workers: int, config: list[str]) -> tuple[str, dict[str, Any]]:
        """Submit; return the topology id and its description (task layout, config)."""
        assert self.cluster is not None
        config = [*config, *self.extra]
        description = json.loads(self.cli("describe", str(file), *config,
                                          "-c", f"topology.workers={workers}"))
        self.cli("submit", str(file), "--name", name, "--workers", str(workers), *config)
        topology_id = next(t["id"] for t in self.cluster.api("list")["topologies"] if t["name"] == name)
        return topology_id, description

    def kill(self, name: str) -> None:
        """Kill the topology and wait until it is gone with its workers."""
        assert self.cluster is not None
        cluster = self.cluster
        self.cli("kill", name, "--wait", "0")
        wait_for(lambda: not cluster.api("list")["topologies"] and not cluster.worker_pids(), 60,
                 f"{name} and its workers gone", every=0.2)

    @contextmanager
    def topology(self, name: str, file: Path, workers: int, config: list[str],
                 output: Path | None) -> Iterator[tuple[SpoutProbe, dict[str, Any]]]:
        """Submit, observe the spout's heartbeats while the body runs, then kill."""
        assert self.state is not None
        if output is not None:
            config = [*config, "-c", f"output.path={output}"]
        topology_id, description = self.submit(name, file, workers, config)
        try:
            spout_tasks = set(description["tasks"][SPOUT])
            with SpoutProbe(self.state, topology_id, spout_tasks, self.args.poll) as probe:
                yield probe, description
            self.kill(name)  # on an error or Ctrl-C, stopping the cluster stops its workers
        finally:
            if output is not None:
                output.unlink(missing_ok=True)

    def status(self, name: str) -> dict[str, Any]:
        assert self.cluster is not None
        return self.cluster.status(name)

    def cpu_groups(self) -> dict[str, list[int]]:
        assert self.cluster is not None and self.zookeeper is not None
        return {
            "workers": list(self.cluster.worker_pids().values()),
            "nimbus": [p.pid for p in self.cluster.nimbus.values()],
            "supervisors": [p.pid for p in self.cluster.supervisors.values()],
            "zookeeper": [self.zookeeper.pid] if self.zookeeper.pid else [],
            "bench": [os.getpid()],
        }

    def output(self, name: str) -> Path | None:
        return self.workdir / f"{name}.jsonl" if self.args.sink == "file" else None


def config_line(description: dict[str, Any], workers: int) -> str:
    config = description["config"]
    ackers = config.get("topology.acker.executors")
    tasks = " ".join(f"{name}={c['parallelism']}" for name, c in description["components"].items())
    return (f"workers={workers} {tasks} ackers={workers if ackers is None else ackers} "
            f"max.spout.pending={config.get('topology.max.spout.pending')} "
            f"message.timeout={config.get('topology.message.timeout.secs'):g}s")


def status_check(bench: Bench, name: str, last: Beat) -> str:
    """The spout's counters in ``status --json``, which sums the same heartbeats."""
    component = bench.status(name)["components"][SPOUT]
    note = f"status --json: acked {component['acked']:,} failed {component['failed']:,}"
    if component["acked"] < last.acked:
        note += f" (BELOW the {last.acked:,} of the heartbeats read before)"
    return note


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def print_beats(beats: list[Beat]) -> None:
    t0 = beats[0].time
    for a, b in itertools.pairwise(beats):
        print(f"    {b.time - t0:6.2f}s acked {b.acked:>10,} emitted {b.emitted:>10,} failed "
              f"{b.failed:>6,} {rate(a, b):>9,.0f}/s", flush=True)


# --------------------------------------------------------------------------- 1. throughput


@dataclass
class Throughput:
    workers: int
    sentences: float
    words: float
    valid: bool
    contended: bool
    serializer: str | None = None


def machine_probe() -> float:
    """Milliseconds of CPU a fixed pure-Python loop (dict updates, as a count bolt does)
    takes, run between topologies while the cluster idles: how fast one core of the
    machine is right then (see the module's last paragraph)."""
    started = time.process_time()
    counts: dict[int, int] = {}
    for i in range(1_000_000):
        key = i % 5000
        counts[key] = counts.get(key, 0) + 1
    return (time.process_time() - started) * 1000


def measure_throughput(bench: Bench, workers: int, run: int, input_path: Path, total: int,
                       words_per_line: float, serializer: str | None = None) -> Throughput:
    args = bench.args
    speed_ms = machine_probe()
    name = f"wc-{workers}w-{run}" + (f"-{serializer}" if serializer else "")
    config = ["-c", f"input.path={input_path}"]
    if serializer:
        config += ["-c", f"topology.serializer={serializer}"]
    if args.scale:
        config += [x for c in ("spout", "split", "count", "sink") for x in ("-c", f"{c}.parallelism={workers}")]
    with bench.topology(name, WORDCOUNT, workers, config, bench.output(name)) as (probe, description):
        first = probe.first_acks()
        start = probe.beat_after(first.time + args.warmup, args.warmup + 30)
        cpu = CpuMeter(bench.cpu_groups())
        end = probe.beat_after(start.time + args.window, args.window + 30)
        busy = cpu.read()
        check = status_check(bench, name, end)
        if args.verbose:
            print_beats(probe.beats)
    sentences = rate(start, end)
    window = end.histogram.minus(start.histogram)
    # A spout task's share is a byte range: its lines number total / tasks give or take a
    # fraction of a percent, and a task that has emitted all of them idles.
    share = total / len(description["tasks"][SPOUT])
    valid = end.most_emitted < 0.99 * share
    print(f"[throughput] {workers} worker{'s' if workers > 1 else ' '} (run {run}"
          f"{', ' + serializer if serializer else ''}): "
          f"{sentences:>9,.0f} sentences/s {sentences * words_per_line:>10,.0f} words/s  "
          f"[{config_line(description, workers)}]"
          + ("" if valid else f"  INVALID: the input ({total:,} sentences, ~{share:,.0f} per spout task) "
                              "ran out; raise --lines")
          + busy.contended,
          flush=True)
    acked = end.acked - start.acked
    notes = [f"complete latency p50 {ms(window.quantile(0.5))} p99 {ms(window.quantile(0.99))}",
             f"worker CPU {sum(busy.groups['workers']) / max(acked, 1) * 1e6:.0f} us/sentence",
             f"machine probe {speed_ms:.0f} ms",
             str(busy), check]
    if end.failed > start.failed:
        notes.append(f"{end.failed - start.failed:,} trees FAILED in the window")
    print("             " + "; ".join(notes), flush=True)
    return Throughput(workers, sentences, sentences * words_per_line, valid, bool(busy.contended), serializer)


def report_throughput(results: list[Throughput], worker_counts: list[int]) -> dict[int, float]:
    """Print best and median per worker count and the ratios; return the best sentences/s."""
    best: dict[int, float] = {}
    median: dict[int, float] = {}
    for workers in worker_counts:
        runs = [r for r in results if r.workers == workers and r.valid]
        if not runs:
            continue
        best[workers] = max(r.sentences for r in runs)
        median[workers] = statistics.median(r.sentences for r in runs)
        words = max(r.words for r in runs)
        contended = sum(r.contended for r in runs)
        print(f"[throughput] {workers} worker{'s' if workers > 1 else ' '} best of {len(runs)}: "
              f"{best[workers]:>9,.0f} sentences/s {words:>10,.0f} words/s  "
              f"(median {median[workers]:,.0f} sentences/s"
              + (f"; {contended} of the runs CONTENDED" if contended else "") + ")", flush=True)
    if 1 in best:
        for workers in worker_counts:
            if workers == 1 or workers not in best:
                continue
            ratio = best[workers] / best[1]
            target = f"  target >= 1.6: {'MET' if ratio >= 1.6 else 'MISSED'}" if workers == 2 else ""
            print(f"[scaling] {workers} workers / 1 worker: {ratio:.2f}x  (best runs; medians "
                  f"{median[workers] / median[1]:.2f}x){target}", flush=True)
    return best


# --------------------------------------------------------------------------- 2. latency


def measure_latency(bench: Bench, sentences_per_s: float, input_path: Path, what: str) -> None:
    args = bench.args
    workers = 2
    name = "wc-throttled"
    # A worker gets only the directory of the submitted file: stage the throttled topology
    # beside topologies/wordcount.py, whose bolts it imports.
    package = bench.workdir / "throttled-package"
    package.mkdir(exist_ok=True)
    shutil.copy(THROTTLED, package / THROTTLED.name)
    shutil.copy(WORDCOUNT, package / WORDCOUNT.name)
    target = max(1, round(sentences_per_s))
    config = ["-c", f"input.path={input_path}", "-c", f"rate={target}"]
    with bench.topology(name, package / THROTTLED.name, workers, config,
                        bench.output(name)) as (probe, description):
        first = probe.first_acks()
        start = probe.beat_after(first.time + args.warmup, args.warmup + 30)
        cpu = CpuMeter(bench.cpu_groups())
        end = probe.beat_after(start.time + args.window, args.window + 30)
        busy = cpu.read()
        status = bench.status(name)["components"][SPOUT]
        if args.verbose:
            print_beats(probe.beats)
    window = end.histogram.minus(start.histogram)
    p50, p99, p999 = (window.quantile(q) for q in (0.5, 0.99, 0.999))
    print(f"[latency] complete latency at {target:,} sentences/s ({what}): p50 {ms(p50)}  "
          f"p99 {ms(p99)}  target p99 < 50 ms: {'MET' if p99 is not None and p99 < 0.05 else 'MISSED'}  "
          f"[{config_line(description, workers)}]{busy.contended}", flush=True)
    lat = status.get("complete_latency_ms") or {}
    failed = end.failed - start.failed
    print(f"          achieved {rate(start, end):,.0f} sentences/s; p99.9 {ms(p999)}; "
          f"{window.total:,} trees over {end.time - start.time:.1f} s"
          + (f"; {failed:,} FAILED" if failed else "")
          + f"; since the start (status --json): p50 {lat.get('p50')} ms p99 {lat.get('p99')} ms; "
          f"{busy}", flush=True)


# --------------------------------------------------------------------------- 3. recovery


@dataclass
class Recovery:
    seconds: float | None  # from the kill until the rate is back to >= 90%
    verdict: str
    afterwards: float | None  # mean rate from then to the end, as a fraction of before
    failed: int
    deficit: float  # sentences behind the pre-kill pace at the end of the observation
    timeline: str


def recovery(beats: list[Beat], killed_at: float, pre_rate: float, observe: float) -> Recovery:
    """When the acked rate, averaged over two heartbeat intervals, is back to >= 90% of
    ``pre_rate`` after the kill (windows start at the first heartbeat after the kill)."""
    first = max(0, bisect.bisect_left([b.time for b in beats], killed_at) - 1)
    after = [b for b in beats[first:] if b.time <= killed_at + observe + 1.5]
    threshold = 0.9 * pre_rate
    back = next((b for a, b in zip(after[1:], after[3:], strict=False) if rate(a, b) >= threshold), None)
    last, base = after[-1], after[0]
    if back is None:
        seconds, afterwards = None, None
        verdict = f"NOT back to >= 90% within the {observe:g} s observed  target < 10 s: MISSED"
    else:
        seconds = back.time - killed_at
        afterwards = rate(back, last) / pre_rate if last.time > back.time + 1 else None
        verdict = f"back to >= 90% after {seconds:.1f} s  target < 10 s: {'MET' if seconds < 10 else 'MISSED'}"
    steps = [f"{b.time - killed_at:+.1f}s {rate(a, b):,.0f}"
             + (f" ({b.failed - a.failed:,} failed)" if b.failed > a.failed else "")
             for a, b in itertools.pairwise(after)]
    deficit = pre_rate * (last.time - base.time) - (last.acked - base.acked)
    return Recovery(seconds, verdict, afterwards, last.failed - base.failed, deficit, " | ".join(steps))


def measure_recovery(bench: Bench, input_path: Path, total: int) -> None:
    args = bench.args
    assert bench.cluster is not None
    cluster = bench.cluster
    workers = 2
    name = "wc-recovery"
    config = ["-c", f"input.path={input_path}",
              "-c", f"topology.message.timeout.secs={args.message_timeout:g}"]
    with bench.topology(name, WORDCOUNT, workers, config, bench.output(name)) as (probe, description):
        first = probe.first_acks()
        start = probe.beat_after(first.time + args.warmup, args.warmup + 30)
        cpu = CpuMeter(bench.cpu_groups())
        before = probe.beat_after(start.time + args.pre_kill, args.pre_kill + 30)
        pre_busy = cpu.read()
        pre_rate = rate(start, before)
        spout_tasks = set(description["tasks"][SPOUT])
        victim = next(w for w in bench.status(name)["workers"] if not spout_tasks & set(w["tasks"]))
        pid = cluster.worker_pids().get(victim["port"])
        if pid is None or pid != victim["pid"]:
            raise RuntimeError(f"the worker on port {victim['port']}: status says pid "
                               f"{victim['pid']}, /proc says {pid}")
        cpu = CpuMeter(bench.cpu_groups())
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: cluster.worker_pids().get(victim["port"]) not in (None, pid), 30,
                 "the worker restarted", every=0.05)
        restarted_after = time.time() - killed_at
        probe.beat_after(killed_at + args.observe, args.observe + 30)
        post_busy = cpu.read(bench.cpu_groups())
        beats = list(probe.beats)
        if args.verbose:
            print_beats(beats)
    outcome = recovery(beats, killed_at, pre_rate, args.observe)
    ran_out = beats[-1].most_emitted >= 0.99 * total  # one spout task: its share is the input
    print(f"[recovery] kill -9 of worker {victim['slot']} (tasks {victim['tasks']}, no spout task) "
          f"at {pre_rate:,.0f} sentences/s: {outcome.verdict}  "
          f"[{config_line(description, workers)}]{pre_busy.contended or post_busy.contended}"
          + (f"  INVALID: the input ({total:,} sentences) ran out during the observation; raise --lines"
             if ran_out else ""),
          flush=True)
    afterwards = ("" if outcome.afterwards is None else
                  f"from then to +{args.observe:g} s the rate averaged {outcome.afterwards:.0%} "
                  f"of the rate before; ")
    print(f"           worker process restarted after {restarted_after:.1f} s; {afterwards}"
          f"{outcome.failed:,} trees failed (timed out) and were replayed; at +{args.observe:g} s "
          f"{abs(outcome.deficit):,.0f} sentences {'behind' if outcome.deficit >= 0 else 'ahead of'} "
          f"the pace before the kill (= {abs(outcome.deficit) / pre_rate:.1f} s at that rate)", flush=True)
    print("           acked/s per heartbeat interval, from the kill: " + outcome.timeline, flush=True)
    print(f"           before the kill: {pre_busy}", flush=True)
    print(f"           after the kill:  {post_busy}", flush=True)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2_000_000,
                        help="sentences of input (default 1000000; each run reads from the start)")
    parser.add_argument("--words-per-line", type=int, default=10)
    parser.add_argument("--workers", default="1,2,4", help="worker counts of the throughput runs")
    parser.add_argument("--supervisors", type=int, default=2, help="supervisors of the cluster (default 2)")
    parser.add_argument("--slots", type=int, default=2,
                        help="worker slots per supervisor (default 2); the most workers a run can have "
                             "is supervisors x slots")
    parser.add_argument("--scale", action="store_true",
                        help="throughput runs on W workers give every component W tasks (for many-core "
                             "machines, where one spout task would be the bottleneck)")
    parser.add_argument("--repeat", type=int, default=2, help="throughput runs per worker count")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds skipped after the spout's first ack (default 5)")
    parser.add_argument("--window", type=float, default=12.0, help="seconds measured (default 12)")
    parser.add_argument("--poll", type=float, default=0.25,
                        help="seconds between two reads of the heartbeats (default 0.25)")
    parser.add_argument("--sink", choices=("file", "top"), default="file",
                        help="file: JSON lines to a temporary file (default); "
                             "top: wordcount's single top-words bolt")
    parser.add_argument("--latency-fraction", type=float, default=0.5,
                        help="rate of the latency run as a fraction of the best 2-worker throughput")
    parser.add_argument("--latency-rate", type=float,
                        help="rate of the latency run in sentences/s (instead of the fraction)")
    parser.add_argument("--message-timeout", type=float, default=5.0,
                        help="topology.message.timeout.secs of the recovery run (default 5)")
    parser.add_argument("--pre-kill", type=float, default=8.0,
                        help="seconds of steady rate measured before the kill (default 8)")
    parser.add_argument("--observe", type=float, default=15.0,
                        help="seconds followed after the kill (default 15: past the message "
                             "timeout, when the trees lost with the worker are replayed)")
    parser.add_argument("--serializer", choices=("msgpack", "pickle", "both"),
                        help="topology.serializer of the throughput runs (both: alternate the two, "
                             "and report each); default: the topology's own")
    parser.add_argument("--skip", default="", help="comma-separated: throughput,latency,recovery")
    parser.add_argument("-c", dest="config", action="append", default=[], metavar="KEY=VALUE",
                        help="extra -c passed to every topology")
    parser.add_argument("--verbose", action="store_true", help="print every spout heartbeat read")
    parser.add_argument("--keep", action="store_true",
                        help="keep the working directory (logs of every process)")
    args = parser.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - {"throughput", "latency", "recovery"}:
        parser.error(f"--skip: unknown {', '.join(sorted(skip - {'throughput', 'latency', 'recovery'}))}")
    worker_counts = [int(n) for n in args.workers.split(",") if n.strip()]
    if args.supervisors < 1 or args.slots < 1:
        parser.error("--supervisors and --slots: at least 1")
    slots = args.supervisors * args.slots
    if not all(1 <= n <= slots for n in worker_counts):
        parser.error(f"--workers: the cluster has {args.supervisors} supervisors x {args.slots} slots = "
                     f"{slots} slots, so 1 to {slots} workers (raise --supervisors or --slots)")
    if slots < 2 and not {"latency", "recovery"} <= skip:
        parser.error("the latency and recovery runs use 2 workers: raise --supervisors or --slots, "
                     "or --skip latency,recovery")
    if "latency" not in skip and not args.latency_rate and ("throughput" in skip or 2 not in worker_counts):
        parser.error("the latency run needs the 2-worker throughput, or --latency-rate")

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    workdir = Path(tempfile.mkdtemp(prefix="streamflow-bench-"))
    began = time.monotonic()
    keep = args.keep
    try:
        input_path = workdir / "sentences.txt"
        words = generate(input_path, args.lines, args.words_per_line)
        words_per_line = words / args.lines
        print(f"input: {args.lines:,} sentences, {words:,} words "
              f"({input_path.stat().st_size / 2**20:.0f} MiB); {os.cpu_count()} CPUs; "
              f"python {sys.version.split()[0]}; sink: "
              f"{'JSON lines to a temporary file' if args.sink == 'file' else 'top-words bolt'}",
              flush=True)
        bench = Bench(args, workdir)
        with bench.running():
            best: dict[int, float] = {}
            if "throughput" not in skip:
                serializers = ["msgpack", "pickle"] if args.serializer == "both" else [args.serializer]
                results = [measure_throughput(bench, workers, run, input_path, args.lines, words_per_line, s)
                           for run in range(1, args.repeat + 1) for workers in worker_counts for s in serializers]
                for serializer in reversed(serializers):  # the first one's best sets the latency run's rate
                    if serializer:
                        print(f"[throughput] topology.serializer={serializer}:", flush=True)
                    best = report_throughput([r for r in results if r.serializer == serializer], worker_counts)
            if "latency" not in skip:
                if args.latency_rate:
                    measure_latency(bench, args.latency_rate, input_path, "--latency-rate")
                elif 2 in best:
                    measure_latency(bench, args.latency_fraction * best[2], input_path,
                                    f"{args.latency_fraction:.0%} of the best 2-worker throughput")
                else:
                    print("[latency] skipped: no valid 2-worker throughput", flush=True)
            if "recovery" not in skip:
                measure_recovery(bench, input_path, args.lines)
    except KeyboardInterrupt:
        print("interrupted; the cluster is stopped", file=sys.stderr)
        return 130
    except BaseException:
        keep = True
        raise
    finally:
        if keep:
            print(f"working directory kept (logs of every process): {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"total {time.monotonic() - began:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
