"""Kafka -> split -> count -> Kafka: streamflow against Bytewax 0.21, side by side.

    python bench/bytewax_wordcount.py [--sentences 200000] [--partitions 4] [--repeat 3] [--profile]
                                      [-c KEY=VALUE ...]

The workload, the broker and three of the runs are bench/kafka_wordcount.py's, through its
functions: N JSON sentences of 8-12 words over 4 partitions of a fresh Tansu broker per
run, split into words, counted per word, every running count written to the topic
``counts``. Each round runs, interleaved: the bare loop, ``streamflow local``, Bytewax with
1 worker, streamflow on 2 workers of a local cluster (ZooKeeper, nimbus, 2 supervisors),
Bytewax with 2 processes (``python -m bytewax.run -i/-a``, one worker each). Bytewax runs
bench/topologies/bytewax_wordcount_flow.py, with its own Kafka source and sink, in a
virtual environment of its own, build/bytewax-venv, made at the first run and kept: Bytewax
0.21 with the confluent-kafka (so the same librdkafka) and orjson versions streamflow has.

Each engine is timed as its streamflow counterpart is by kafka_wordcount.py:

- streamflow local and Bytewax with 1 worker: the whole process, launch to exit;
- streamflow on 2 workers and Bytewax with 2 processes: from submission (launch) to the last
  count written, by the output records' timestamps (librdkafka's CreateTime, this machine's
  clock), and, in brackets, from the first count written to the last.

After every run, the bare loop's included, the output topic is read back
(kafka_wordcount's ``read_back``): the highest count written for each word must be its
true count, or the bench stops with the first wrong word.

Printed per run: sentences/s and the share of the same round's bare loop; per round: the
two ratios of the throughput issue, streamflow local / Bytewax 1 worker and streamflow 2
workers / Bytewax 2 processes; at the end, the medians. For the two 2-process runs also the
CPU time of every process of the run (workers, broker, nimbus, supervisors, ZooKeeper, this
script), of the rest of the machine (other users) and the idle CPU, over the timed window,
from /proc sampled every 0.1 s; the rate the run's processes would make on the machine's
CPUs alone at the CPU per sentence they used (other users of the machine move it little);
and how the busiest thread of each worker spent that
window, from the scheduler's counters (/proc/PID/task/TID/schedstat): on a CPU, runnable
but queued for one (it shares the cores: more CPU would make it faster), or asleep (it
waits: for input, for an answer, on a timer or a lock). That holds on a busy machine too,
where the idle share alone says nothing.

``--profile`` ends with one more streamflow 2-worker run, not part of the comparison, with
py-spy (installed into the same venv) recording the GIL-holding thread of both workers at
100 Hz from a second after they start, and prints the 15 functions with the most own time
and the most cumulative time, and each role's share (Kafka spout, user code, collector,
transport, acking, sink, event loop...); py-spy's raw stacks stay in bench/out/.
"""

from __future__ import annotations

import argparse
import bisect
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import confluent_kafka
import kafka_wordcount as kw
from cluster_wordcount import CLOCK_TICKS, CpuMeter

ROOT = kw.ROOT
sys.path.insert(0, str(ROOT / "tests"))  # as kafka_wordcount does

from cluster import Cluster, free_port_run  # noqa: E402  (tests/cluster.py)
from zookeeper import ZooKeeperServer  # noqa: E402  (tests/zookeeper.py)

VENV = ROOT / "build" / "bytewax-venv"
FLOW = Path(__file__).resolve().parent / "topologies" / "bytewax_wordcount_flow.py"


# --------------------------------------------------------------------------- Bytewax's venv

INSTALLED = """import importlib.metadata as m, re, sys
for requirement in sys.argv[1:]:
    name, _, version = requirement.partition("==")
    if not m.version(re.sub(r"\\[.*\\]", "", name)).startswith(version.rstrip("*")):
        sys.exit(1)"""
"""Exits 0 if every requirement given (``name``, ``name==X.Y`` or ``name==X.*``) is installed."""


def bytewax_python(profile: bool) -> Path:
    """The Python of build/bytewax-venv, made or completed if it lacks a package: Bytewax
    0.21 with its Kafka extra, and py-spy when ``profile``. confluent-kafka and orjson are
    pinned to this process's versions, so that both engines use the same librdkafka."""
    python = VENV / "bin" / "python"
    wanted = ["bytewax[kafka]==0.21.*", f"confluent-kafka=={metadata.version('confluent-kafka')}",
              f"orjson=={metadata.version('orjson')}", *(["py-spy"] if profile else [])]
    if python.exists() and subprocess.run([python, "-c", INSTALLED, *wanted], stderr=subprocess.DEVNULL,
                                          cwd=VENV).returncode == 0:
        return python
    print(f"installing {', '.join(wanted)} into {VENV.relative_to(ROOT)}", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *wanted], check=True)
    return python


# --------------------------------------------------------------------------- CPU per process

BOOTED = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
              if line.startswith("btime "))


def role_of(argv: Sequence[str]) -> str:
    """A process's part in a run, from its command line."""
    if not argv:
        return "?"
    if "tansu" in Path(argv[0]).name:
        return "Kafka broker (Tansu)"
    if any("zookeeper" in arg.lower() for arg in argv[1:]):
        return "ZooKeeper"
    if "streamflow.cli" in argv:
        at = argv.index("streamflow.cli") + 1
        return f"streamflow {argv[at] if at < len(argv) else 'cli'}"
    if "bytewax.run" in argv:
        return "Bytewax process"
    return Path(argv[0]).name


BENCH = "this script (bench)"
ENGINE_PROCESSES = ("streamflow worker", "Bytewax process")
"""The roles whose threads are sampled too, and that get a row each in the table."""


def interpolate(times: Sequence[float], values: Sequence[float], when: float) -> float:
    """The value at ``when`` of a series sampled at ``times`` (ascending), linear between
    samples and held at the first and last value outside them."""
    at = bisect.bisect_left(times, when)
    if at == 0:
        return values[0]
    if at == len(times):
        return values[-1]
    share = (when - times[at - 1]) / max(times[at] - times[at - 1], 1e-9)
    return values[at - 1] + share * (values[at] - values[at - 1])


@dataclass
class Series:
    """Samples of a process's or a thread's counters: CPU seconds, and for a thread the
    seconds it was runnable but queued for a CPU (the scheduler's run delay)."""

    times: list[float]
    cpu: list[float]
    queued: list[float]

    def add(self, when: float, cpu: float, queued: float = 0.0) -> None:
        self.times.append(when)
        self.cpu.append(cpu)
        self.queued.append(queued)

    def between(self, start: float, end: float) -> tuple[float, float]:
        """CPU seconds and queued seconds from ``start`` to ``end``."""
        return (interpolate(self.times, self.cpu, end) - interpolate(self.times, self.cpu, start),
                interpolate(self.times, self.queued, end) - interpolate(self.times, self.queued, start))


@dataclass
class Process:
    pid: int
    role: str
    counters: Series
    threads: dict[int, Series] = field(default_factory=dict)
    """Of an engine's process: each thread's counters, by thread id."""


def _stat(pid: int) -> tuple[int, float, float] | None:
    """``(parent pid, CPU seconds, start time in seconds since the epoch)``, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    return int(fields[1]), cpu, BOOTED + int(fields[19]) / CLOCK_TICKS


def _threads(pid: int) -> dict[int, tuple[float, float]]:
    """``{thread id: (seconds on a CPU, seconds runnable but queued for one)}`` of a
    process's threads, from /proc/PID/task/TID/schedstat."""
    found = {}
    try:
        tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    for tid in tids:
        try:
            on_cpu, queued = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        found[tid] = (int(on_cpu) / 1e9, int(queued) / 1e9)
    return found


class ProcessCpu:
    """Samples, every ``every`` seconds while open, the CPU time of this process and of all
    its descendants (a supervisor's workers included), the scheduler's counters of each
    thread of an engine's process, and the machine's busy time. ``on_start(pid, role)`` is
    called, in the sampling thread, for each new descendant."""

    def __init__(self, every: float = 0.1, on_start: Callable[[int, str], None] | None = None) -> None:
        self.every, self.on_start = every, on_start
        self.processes: dict[int, Process] = {}
        self.machine = Series([float(BOOTED)], [0.0], [0.0])
        """The machine's busy CPU seconds since it booted."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-cpu", daemon=True)

    def __enter__(self) -> ProcessCpu:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        stats = {pid: stat for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                 if (stat := _stat(pid)) is not None}
        now = time.time()
        children: dict[int, list[int]] = {}
        for pid, (parent, _, _) in stats.items():
            children.setdefault(parent, []).append(pid)
        family, at = [os.getpid()], 0
        while at < len(family):
            family += children.get(family[at], [])
            at += 1
        for pid in family:
            if pid not in self.processes and not self._found(pid, stats[pid][2]):
                continue
            process = self.processes[pid]
            process.counters.add(now, stats[pid][1])
            if process.role in ENGINE_PROCESSES:
                for tid, (on_cpu, queued) in _threads(pid).items():
                    started = process.counters.times[0]
                    process.threads.setdefault(tid, Series([started], [0.0], [0.0])).add(now, on_cpu, queued)
        self.machine.add(now, CpuMeter.machine())

    def _found(self, pid: int, started: float) -> bool:
        """Start following a new descendant; False if it is already gone."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return False
        role = BENCH if pid == os.getpid() else role_of([a for a in argv if a])
        self.processes[pid] = Process(pid, role, Series([started], [0.0], [0.0]))
        if self.on_start is not None:
            self.on_start(pid, role)
        return True

    def table(self, start: float, end: float, sentences: int) -> str:
        """Between ``start`` and ``end`` (seconds since the epoch): the CPU seconds, share of
        the wall time and µs per sentence of each process, of the rest of the machine and
        of its idle CPU; the rate the run's processes would make if the machine were theirs
        and their CPU per sentence stayed; then, for each engine process, how its busiest
        thread spent the time: on a CPU, runnable but queued for a CPU (the cores were
        taken), or asleep (waiting for input, an answer, a timer or a lock)."""
        wall = end - start
        used: dict[str, float] = {}
        busiest: dict[str, tuple[float, float]] = {}
        for p in self.processes.values():
            seconds = p.counters.between(start, end)[0]
            if p.role in ENGINE_PROCESSES:
                name = f"{p.role} (pid {p.pid})"
                busiest[name] = max((t.between(start, end) for t in p.threads.values()), default=(0.0, 0.0))
            elif seconds > 0:
                name = p.role
            else:
                continue
            used[name] = used.get(name, 0.0) + seconds
        busy = self.machine.between(start, end)[0]
        cpus = os.cpu_count() or 1
        order = [*ENGINE_PROCESSES, "Kafka broker"]
        rows = sorted(used.items(), key=lambda kv: (next((i for i, w in enumerate(order) if w in kv[0]),
                                                         len(order)), -kv[1]))
        rows += [("other processes of the machine", max(0.0, busy - sum(used.values()))),
                 (f"idle ({cpus} CPUs)", max(0.0, cpus * wall - busy))]
        lines = [f"    {f'CPU over {wall:.2f} s':<40} {'CPU s':>7} {'% of wall':>10} {'CPU µs/sentence':>16}"]
        lines += [f"    {name:<40} {seconds:>7.2f} {seconds / wall:>10.0%} {seconds / sentences * 1e6:>16.1f}"
                  for name, seconds in rows]
        mine = sum(seconds for name, seconds in used.items() if name != BENCH) / sentences
        lines.append(f"    the run's processes less this script: {mine * 1e6:.0f} µs CPU per sentence, so at most "
                     f"{cpus / mine:,.0f} sentences/s on {cpus} CPUs of their own")
        heading = "busiest thread of each engine process"
        lines.append(f"    {heading:<40} {'on a CPU':>10} {'queued for a CPU':>17} {'asleep':>7}")
        lines += [f"    {name:<40} {cpu / wall:>10.0%} {queued / wall:>17.0%} "
                  f"{max(0.0, wall - cpu - queued) / wall:>7.0%}" for name, (cpu, queued) in busiest.items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- Bytewax runs

@dataclass
class BytewaxRun:
    launched: float
    exited: float
    output: kw.Output


def run_bytewax(python: Path, directory: Path, values: list[bytes], partitions: int, processes: int,
                expected: Mapping[str, int]) -> BytewaxRun:
    """The dataflow on a fresh broker, in ``processes`` processes of one worker each, until
    every process has read its partitions to the end and exited."""
    engine = f"Bytewax, {processes} process{'es' if processes > 1 else ''}"
    with kw.fresh_broker(directory, values, partitions) as broker:
        command = [str(python), "-m", "bytewax.run", f"{FLOW}:build({broker.bootstrap!r})"]
        if processes > 1:
            base = free_port_run(processes)
            addresses = ";".join(f"127.0.0.1:{base + i}" for i in range(processes))
            commands = [[*command, "-i", str(i), "-a", addresses] for i in range(processes)]
        else:
            commands = [command]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        logs = [directory / f"bytewax-{i}.log" for i in range(processes)]
        launched = time.time()
        running = [subprocess.Popen(c, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT, env=env)
                   for c, log in zip(commands, logs, strict=True)]
        codes = [p.wait(600) for p in running]
        exited = time.time()
        if any(codes):
            tail = next(log.read_text(errors="replace").strip().splitlines()[-1:]
                        for log, code in zip(logs, codes, strict=True) if code)
            raise SystemExit(f"{engine} exited with {codes}: {tail}")
        return BytewaxRun(launched, exited, kw.read_back(broker, expected, engine))


# --------------------------------------------------------------------------- the profile

ENTRY = "entry (process, threads)"
"""The frames every stack of a thread starts with: left out of the cumulative top list."""
PROFILE_ROLES = [
    ("/wordcount.py", "split/count user code"),  # from topologies/, or a worker's code directory
    ("connectors/kafka/sink", "sink/produce"),
    ("connectors/kafka/", "Kafka spout/fetch"),
    ("streamflow/acking", "acking"),
    ("streamflow/transport/", "transport/encode/decode"),
    ("streamflow/collector", "collector/emit"),
    ("streamflow/groupings", "collector/emit"),
    ("streamflow/tuples", "collector/emit"),
    ("streamflow/state/", "state/checkpoint"),
    ("streamflow/checkpoint", "state/checkpoint"),
    ("streamflow/executor", "executor/inbox"),
    ("streamflow/inbox", "executor/inbox"),
    ("streamflow/components", "executor/inbox"),
    ("asyncio/runners.py", ENTRY),
    ("asyncio/", "event loop"),
    ("selectors.py", "event loop"),
    ("uvloop", "event loop"),
    ("importlib", "start-up (imports)"),
    ("runpy", ENTRY),
    ("/threading.py", ENTRY),
    ("streamflow/cli.py", ENTRY),
    ("streamflow/worker_process.py", ENTRY),
    ("streamflow/", "engine, other"),
]
"""The role of a function by the path of its file: the first pattern in it wins."""


def frame_role(frame: str) -> str:
    """The role of a py-spy frame ``function (path:line)``."""
    path = frame.rpartition(" (")[2]
    return next((role for pattern, role in PROFILE_ROLES if pattern in path), "other")


def parse_stacks(raw: str) -> Counter[tuple[str, ...]]:
    """py-spy's raw output (``frame;frame;... count`` per line), as stacks, root first."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def labelled(stack: Sequence[str]) -> list[tuple[str, str]]:
    """``(label, role)`` of each frame: the label is ``function (file:line)`` with the path
    cut to its last two parts (so one function of the two workers' code directories is one
    label); generated code (``<string>``: a namedtuple's or dataclass's methods) takes its
    caller's role."""
    frames: list[tuple[str, str]] = []
    for frame in stack:
        function, _, where = frame.rpartition(" (")
        role = frames[-1][1] if where.startswith("<string>") and frames else frame_role(frame)
        frames.append((f"{function} ({'/'.join(where.split('/')[-2:])}", role))
    return frames


def profile_report(stacks: Counter[tuple[str, ...]], top: int = 15) -> str:
    """The ``top`` functions by own and by cumulative samples, and each role's share of the
    samples by own time (the leaf frame's role) and by cumulative time (a sample counts
    once for each role on its stack)."""
    total = sum(stacks.values())
    if not total:
        return "  no samples (could py-spy attach to the workers?)"
    roles: dict[str, str] = {}
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    role_own: Counter[str] = Counter()
    role_cumulative: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = labelled(stack)
        roles.update(frames)
        own[frames[-1][0]] += count
        role_own[frames[-1][1]] += count
        for label in {label for label, role in frames if role != ENTRY}:
            cumulative[label] += count
        for role in {role for _, role in frames}:
            role_cumulative[role] += count
    lines = [f"  {total} samples"]
    for title, functions in (("own time", own), (f"cumulative time (less '{ENTRY}')", cumulative)):
        lines.append(f"  top {top} functions by {title}:")
        lines += [f"    {count / total:>6.1%}  {roles[label]:<24} {label}"
                  for label, count in functions.most_common(top)]
    lines.append(f"  by role:  {'own':>7} {'cumulative':>11}")
    lines += [f"    {role:<24} {count / total:>6.1%} {role_cumulative[role] / total:>11.1%}"
              for role, count in role_own.most_common()]
    return "\n".join(lines)


class WorkerProfiles:
    """py-spy recording, from ``delay`` s after it starts, each streamflow worker that
    :class:`ProcessCpu` sees start, until the worker exits. Only the thread that holds the
    GIL is sampled (``--gil``): the profile is the worker's Python CPU time, without the
    threads that wait (the event loop's select, kazoo's and the executor pool's threads)."""

    def __init__(self, py_spy: Path, directory: Path, delay: float = 1.0) -> None:
        self.py_spy, self.directory, self.delay = py_spy, directory, delay
        self.recorders: list[subprocess.Popen[bytes]] = []
        self.outputs: list[Path] = []

    def on_start(self, pid: int, role: str) -> None:
        if role == "streamflow worker":
            threading.Timer(self.delay, self._record, (pid,)).start()

    def _record(self, pid: int) -> None:
        out = self.directory / f"worker-{pid}.txt"
        self.outputs.append(out)
        self.recorders.append(subprocess.Popen(
            [self.py_spy, "record", "--pid", str(pid), "--rate", "100", "--gil", "--function",
             "--full-filenames", "--format", "raw", "-o", out],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stacks(self) -> Counter[tuple[str, ...]]:
        """Every worker's samples, once the recorders have ended with their workers."""
        for recorder in self.recorders:
            recorder.wait(60)
        stacks: Counter[tuple[str, ...]] = Counter()
        for out in self.outputs:
            if out.exists():
                stacks.update(parse_stacks(out.read_text()))
        return stacks


# --------------------------------------------------------------------------- the comparison

ENGINES = ["bare loop", "streamflow local", "Bytewax 1 worker", "streamflow 2 workers", "Bytewax 2 processes"]
RATIOS = [("streamflow local", "Bytewax 1 worker"), ("streamflow 2 workers", "Bytewax 2 processes")]


def run_round(run: int, tmp: Path, cluster: Cluster, python: Path, values: list[bytes], partitions: int,
              extra: list[str], expected: Mapping[str, int]) -> dict[str, float]:
    """One round of the five runs, printed as they end; returns sentences/s by engine."""
    n = len(values)
    rates: dict[str, float] = {}

    def show(engine: str, note: str = "") -> None:
        print(f"{engine:<20} (run {run}): {rates[engine]:>9,.0f} sentences/s  "
              f"{rates[engine] / rates['bare loop']:>4.0%} of the bare loop{note}", flush=True)

    with kw.fresh_broker(tmp / f"bare-{run}", values, partitions) as broker:
        done, seconds = kw.bare_loop(broker.bootstrap, kw.INPUT, kw.OUTPUT, partitions)
        kw.read_back(broker, expected, "bare loop")
    rates["bare loop"] = done / seconds
    show("bare loop")

    with kw.fresh_broker(tmp / f"local-{run}", values, partitions) as broker:
        rates["streamflow local"] = kw.run_local(broker, n, extra)
        kw.read_back(broker, expected, "streamflow local")
    show("streamflow local", " (whole process)")

    one = run_bytewax(python, tmp / f"bytewax1-{run}", values, partitions, 1, expected)
    rates["Bytewax 1 worker"] = n / (one.exited - one.launched)
    show("Bytewax 1 worker", " (whole process)")

    with kw.fresh_broker(tmp / f"cluster-{run}", values, partitions) as broker, ProcessCpu() as cpu:
        began = time.time()
        rate, steady, _, _ = kw.run_cluster(cluster, broker, n, extra)
        output = kw.read_back(broker, expected, "streamflow 2 workers")
    rates["streamflow 2 workers"] = rate
    show("streamflow 2 workers", f" (from submission; {steady:,.0f} from the first count written)")
    print(cpu.table(began, output.last_written, n))

    with ProcessCpu() as cpu:
        two = run_bytewax(python, tmp / f"bytewax2-{run}", values, partitions, 2, expected)
    rates["Bytewax 2 processes"] = n / (two.output.last_written - two.launched)
    show("Bytewax 2 processes", f" (from launch; "
         f"{n / (two.output.last_written - two.output.first_written):,.0f} from the first count written)")
    print(cpu.table(two.launched, two.output.last_written, n))
    print(f"round {run}: " + "; ".join(f"{a} / {b} = {rates[a] / rates[b]:.2f}" for a, b in RATIOS)
          + " (target: 2.00); counts exact in all five runs", flush=True)
    return rates


def profile_run(tmp: Path, cluster: Cluster, python: Path, values: list[bytes], partitions: int,
                extra: list[str], expected: Mapping[str, int]) -> None:
    """One more streamflow 2-worker run with py-spy on both workers; prints the profile and
    keeps py-spy's raw stacks in bench/out/ (flamegraph.pl and speedscope read them)."""
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    profiles = WorkerProfiles(python.parent / "py-spy", out)
    with kw.fresh_broker(tmp / "cluster-profiled", values, partitions) as broker, \
            ProcessCpu(on_start=profiles.on_start):
        rate, _, _, _ = kw.run_cluster(cluster, broker, len(values), extra)
        kw.read_back(broker, expected, "streamflow 2 workers, profiled")
    print(f"profile of both workers of a 2-worker run under py-spy at 100 Hz ({rate:,.0f} sentences/s "
          "from submission, not part of the comparison):")
    print(profile_report(profiles.stacks()))
    print(f"  py-spy's raw stacks: {', '.join(str(o.relative_to(ROOT)) for o in profiles.outputs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the five runs, interleaved")
    parser.add_argument("--profile", action="store_true",
                        help="end with a 2-worker run with py-spy on both workers, and print its profile")
    parser.add_argument("-c", dest="config", action="append", default=[], metavar="KEY=VALUE",
                        help="topology config for both streamflow runs")
    args = parser.parse_args()
    if args.sentences < 1 or args.partitions < 1 or args.repeat < 1:
        parser.error("--sentences, --partitions and --repeat take a number of at least 1")
    extra = [arg for pair in args.config for arg in ("-c", pair)]
    python = bytewax_python(args.profile)
    versions = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('bytewax'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    values = kw.sentences(args.sentences)
    expected = kw.true_counts(values)
    print(f"{args.sentences:,} sentences on {args.partitions} partitions, {os.cpu_count()} CPUs; Bytewax "
          f"{versions}; confluent-kafka {metadata.version('confluent-kafka')} (librdkafka "
          f"{confluent_kafka.libversion()[0]}) on both sides", flush=True)
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        zk = ZooKeeperServer(tmp / "zk")
        zk.start()
        cluster = None
        try:
            cluster = Cluster(zk.hosts, "/bench", tmp / "cluster", nimbus_count=1, supervisors=2, slots=1).start()
            for run in range(1, args.repeat + 1):
                rounds.append(run_round(run, tmp, cluster, python, values, args.partitions, extra, expected))
            if args.profile:
                profile_run(tmp, cluster, python, values, args.partitions, extra, expected)
        finally:
            if cluster is not None:
                cluster.stop()
            zk.stop()
    print(f"medians of {len(rounds)} rounds:")
    for engine in ENGINES:
        rate = statistics.median(r[engine] for r in rounds)
        share = statistics.median(r[engine] / r["bare loop"] for r in rounds)
        print(f"  {engine:<20}: {rate:>9,.0f} sentences/s  {share:>4.0%} of the bare loop")
    for a, b in RATIOS:
        print(f"  {a} / {b}: {statistics.median(r[a] / r[b] for r in rounds):.2f} (target: 2.00)")


if __name__ == "__main__":
    main()
