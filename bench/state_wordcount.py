"""Checkpointed state in the Kafka word count: what it costs, how fast it recovers after
``kill -9``, and how fast a task restores a large state.

    .venv/bin/python bench/state_wordcount.py [--only throughput|recovery|restore]
        [--sentences 200000] [--repeat 2] [--recovery-sentences 1000000] [--timeout 30]
        [--keys 1000000] [--partitions 4] [-c KEY=VALUE ...]

Starts what it needs and stops it at the end: ZooKeeper, a local cluster (one nimbus, 2
supervisors of one slot each, tests/cluster.py), a Redis server (tests/redis_server.py,
an append-only file fsynced at every write) and, for each run, a Tansu broker of its own
holding only the input (bench/kafka_wordcount.py's ``fresh_broker``: JSON sentences of
8-12 words from a 1,000-word vocabulary, on 4 partitions). The stateful runs keep the
count bolt's state in Redis (``-c topology.state.provider=redis``), each run under a
namespace of its own (``-c topology.state.namespace=``). ``-c`` values go to every
topology. Nothing is asserted: the script prints each figure beside its target.

1. **Throughput, stateful against stateless** (``--only throughput``): the word count on
   2 workers with a spout task in each (``-c spout.parallelism=2``, as kafka_wordcount's
   2-worker run), once with the stateful count bolt and once with ``-c
   count.stateful=false`` (the same counting in a plain dict, no coordinator, no
   checkpoints), ``--repeat`` pairs, the order alternating from pair to pair (stateless
   first, then stateful first) so that a slow spell does not always hit the same one.
   Each run goes until the spout has acked every sentence and is timed by its output:
   sentences/s from the first count written to the last, by the records' timestamps
   (taken by the workers' producers), and, in brackets, from submission. Printed: each
   run's rate, the ratio stateful/stateless of each pair and of the medians (target:
   >= 70%), and whether each run's counts are exact: the highest count written for each
   word must be its count in the input (for a stateful run, the state left in Redis is
   checked too). CPU use during each run is printed beside it: "others" is what
   processes outside the benchmark took (other people's tests on a shared machine).
2. **Recovery after kill -9** (``--only recovery``): the stateful word count on 2 workers
   with one spout task (``-c spout.parallelism=1``), so that one worker holds count and
   split tasks but no spout task; ``--recovery-sentences`` of input,
   ``topology.message.timeout.secs`` = ``--timeout`` (30 s, the default of the engine).
   Once 40% of the input is acked, that worker gets ``kill -9``; its supervisor starts it
   again, its tasks restore their state from Redis and the topology rolls back to the
   last committed checkpoint. Progress is read from the output afterwards: a record adds
   to progress by how far its count exceeds the highest count written for its word
   before, so counts written again by a replay add nothing and each word of the input
   counts once. The rate before the kill is the progress from 5 s after the first count
   to the kill; recovery is the time from the kill to the end of the first 2-second
   window (from the kill on, in steps of a second) whose rate is back to >= 90% of it.
   Target: < message timeout + 5 s. Printed too: the rate per second around the kill,
   ``checkpoint.rollbacks`` (the coordinator's) and the tasks' ``state.rollbacks``, the
   spout's failed trees, and whether the final counts are exact. The input must last
   well past the recovery; the script says when it did not (raise
   ``--recovery-sentences``).
3. **Restore of 1,000,000 keys** (``--only restore``): on a fresh Redis server, a
   :class:`~streamflow.state.redis.RedisProvider` and a
   :class:`~streamflow.state.kv.KeyValueState` of one task owning all 128 key groups
   write ``--keys`` word-like str keys with int values through the store's
   ``prepare``/``commit``, 100,000 keys a checkpoint, as the executor does. Then a new
   provider (a restarted worker's connection) times ``store.restore`` of the 128 groups
   and ``KeyValueState.load`` into a fresh state, three times. Target: < 10 s.

About 8 minutes with the defaults on a 2-core machine. This machine's speed varies by
30% from hour to hour (a virtual machine's core is not equally fast from minute to
minute), and more when others use it: compare only figures of the same run, such as the
stateful/stateless ratio of a pair, never figures of two invocations.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import os
import random
import signal
import statistics
import string
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from streamflow_connectors.kafka.records import Message

from streamflow.client import NimbusClient
from streamflow.config import SETTINGS
from streamflow.state.codec import decode_key, decode_value
from streamflow.state.kv import KeyValueState
from streamflow.state.redis import RedisProvider

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster import Cluster, wait_for  # noqa: E402  (tests/cluster.py)
from cluster_wordcount import CpuMeter  # noqa: E402  (bench/, beside this file)
from kafka import KafkaBroker  # noqa: E402  (tests/kafka.py)
from kafka_wordcount import WORD, WORDCOUNT, fresh_broker, sentences  # noqa: E402  (bench/)
from redis_server import RedisServer  # noqa: E402  (tests/redis_server.py)
from zookeeper import ZooKeeperServer  # noqa: E402  (tests/zookeeper.py)

SPOUT, COUNT = "sentences", "count"
KEY_GROUPS = int(SETTINGS["topology.state.key.groups"].default)
THROUGHPUT_TARGET = 0.70
"""Stateful sentences/s at least this share of the stateless."""
RECOVERY_MARGIN = 5.0
"""Recovery target: within the message timeout plus this many seconds."""
RESTORE_TARGET = 10.0
"""Restore target: seconds for a task to restore --keys keys."""
KILL_AT = 0.4
"""Share of the input acked when the count worker is killed."""
WARMUP = 5.0
"""Seconds after the first count written left out of the rate before the kill."""
WINDOW = 2
"""Seconds a recovery window spans."""
RESTORE_BATCH = 100_000
"""Keys a checkpoint of the restore bench writes."""


# --------------------------------------------------------------------------- the output


@dataclass
class Output:
    """What a run wrote to the output topic."""

    records: int
    highest: dict[str, int]
    """Each word's highest count written: its final count."""
    progress: Counter[int]
    """Timestamp (ms) -> how far the records written then raised their words' highest counts."""
    first: float
    last: float
    """Timestamps of the first and the last record, in seconds since the epoch."""


def read_output(bootstrap: str, topic: str, partitions: int) -> Output:
    """Read every record of ``topic``. Tansu's end offset is its last record batch's base
    offset + 1: a partition is read once a record at or past it has come, and the rest of
    that batch with it; then what else comes within a second."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-state-reader",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        pending = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] - 1 for tp in tps}
        pending = {p: last for p, last in pending.items() if last >= 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        highest: dict[str, int] = {}
        progress: Counter[int] = Counter()
        records, first, last = 0, float("inf"), 0.0
        idle_since = None
        deadline = time.monotonic() + 600
        while pending or idle_since is None or time.monotonic() - idle_since < 1.0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{topic}: partitions {sorted(pending)} not read to their end in 600 s")
            batch = cast(list[Message], consumer.consume(10_000, timeout=0.2))
            if not batch and not pending:
                idle_since = idle_since or time.monotonic()
                continue
            idle_since = None
            for message in batch:
                if message.error() is not None:
                    continue
                value = orjson.loads(message.value() or b"")
                word, count = value["word"], value["count"]
                before = highest.get(word, 0)
                at = message.timestamp()[1]
                if count > before:
                    highest[word] = count
                    progress[at] += count - before
                first, last = min(first, at), max(last, at)
                records += 1
                if message.offset() >= pending.get(message.partition(), sys.maxsize):
                    del pending[message.partition()]
        return Output(records, highest, progress, first / 1000, last / 1000)
    finally:
        consumer.close()


def expected_counts(values: list[bytes]) -> Counter[str]:
    """Each word's count in the input, as the topology splits it."""
    counts: Counter[str] = Counter()
    for value in values:
        counts.update(WORD.findall(orjson.loads(value)["text"].lower()))
    return counts


def exactness(found: dict[Any, Any], expected: Counter[str]) -> str:
    """'exact', or how many words are counted wrong and an example."""
    wrong = sorted(w for w in expected.keys() | found.keys() if found.get(w, 0) != expected.get(w, 0))
    if not wrong:
        return f"exact ({len(expected):,} words, {sum(expected.values()):,} counted)"
    high = sum(1 for w in wrong if found.get(w, 0) > expected.get(w, 0))
    w = wrong[0]
    return (f"NOT EXACT: {len(wrong):,} of {len(expected):,} words wrong ({high:,} too high, "
            f"{len(wrong) - high:,} too low or missing; {w!r}: {found.get(w, 0):,}, input {expected.get(w, 0):,})")


def state_in_redis(url: str, namespace: str) -> dict[Any, Any]:
    """The count bolt's state as the last committed checkpoint left it in Redis."""
    provider = RedisProvider(url, namespace)
    try:
        record = provider.read_checkpoint()
        upto = None if record is None else (int(record["epoch"]), int(record["txid"]))
        data = provider.store(COUNT).restore(upto, range(KEY_GROUPS))
        return {decode_key(k): decode_value(v) for k, v in data.items()}
    finally:
        provider.close()


# --------------------------------------------------------------------------- a run


class Bench:
    """ZooKeeper, the cluster and Redis; submitting and observing word counts on them."""

    def __init__(self, workdir: Path, config: list[str]) -> None:
        self.workdir = workdir
        self.extra = [arg for pair in config for arg in ("-c", pair)]
        self.zookeeper: ZooKeeperServer | None = None
        self.cluster: Cluster | None = None
        self.redis: RedisServer | None = None

    @contextmanager
    def running(self) -> Iterator[Bench]:
        try:
            began = time.monotonic()
            self.zookeeper = ZooKeeperServer(self.workdir / "zookeeper")
            self.zookeeper.start()
            self.cluster = Cluster(self.zookeeper.hosts, "/bench-state", self.workdir / "cluster",
                                   nimbus_count=1, supervisors=2, slots=1).start()
            self.cluster.env["STREAMFLOW_LOG_LEVEL"] = "WARNING"  # for CLI calls: no INFO lines
            self.redis = RedisServer(self.workdir / "redis").start()
            print(f"cluster: 1 nimbus, 2 supervisors x 1 slot; Redis {self.redis.url} "
                  f"(appendfsync {self.redis.appendfsync}); up in {time.monotonic() - began:.1f} s", flush=True)
            yield self
        finally:
            if self.cluster is not None:
                self.cluster.stop()
            if self.redis is not None:
                self.redis.stop()
            if self.zookeeper is not None:
                self.zookeeper.stop()

    def stateful(self, namespace: str) -> list[str]:
        assert self.redis is not None
        return ["-c", "topology.state.provider=redis", "-c", f"topology.state.redis.url={self.redis.url}",
                "-c", f"topology.state.namespace={namespace}"]

    @contextmanager
    def topology(self, name: str, broker: KafkaBroker, config: list[str]) -> Iterator[Running]:
        """Submit the word count on 2 workers, reading ``broker``; kill it at the end and
        wait until its workers are gone."""
        assert self.cluster is not None
        cluster = self.cluster
        config = ["-c", f"kafka.bootstrap={broker.bootstrap}", "-c", "output.topic=counts", *config, *self.extra]
        described = cluster.cli("describe", str(WORDCOUNT), *config, "-c", "topology.workers=2")
        assert described.returncode == 0, described.stderr
        submitted = time.time()
        result = cluster.cli("submit", str(WORDCOUNT), "--name", name, "--workers", "2", *config)
        assert result.returncode == 0, result.stderr
        try:
            yield Running(name, cluster, orjson.loads(described.stdout)["tasks"], submitted, broker)
        finally:
            cluster.cli("kill", name, "--wait", "0")
            wait_for(lambda: not cluster.api("list")["topologies"] and not cluster.worker_pids(), 60,
                     f"{name} and its workers gone", every=0.2)

    def cpu_groups(self, broker: KafkaBroker) -> dict[str, list[int]]:
        assert self.cluster is not None and self.zookeeper is not None and self.redis is not None
        return {
            "workers": list(self.cluster.worker_pids().values()),
            "broker": [broker.pid] if broker.pid else [],
            "redis": [self.redis.pid] if self.redis.pid else [],
            "cluster": [p.pid for p in [*self.cluster.nimbus.values(), *self.cluster.supervisors.values()]]
                       + ([self.zookeeper.pid] if self.zookeeper.pid else []),
            "bench": [os.getpid()],
        }


class Running:
    """A submitted word count."""

    def __init__(self, name: str, cluster: Cluster, tasks: dict[str, list[int]], submitted: float,
                 broker: KafkaBroker) -> None:
        self.name, self.cluster, self.tasks, self.submitted, self.broker = name, cluster, tasks, submitted, broker
        self.nimbus = NimbusClient(cluster.url)  # in this process: a CLI per poll would cost a core's third

    def status(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.nimbus.call("GET", "status", self.name))

    def acked(self) -> int:
        return int(self.status()["components"][SPOUT]["acked"])

    def wait_acked(self, n: int, timeout: float, what: str) -> None:
        wait_for(lambda: self.acked() >= n, timeout, what, every=0.25)

    def figures(self) -> dict[str, float]:
        """The checkpoint and state figures, and the spout's failed and replayed trees."""
        components = self.status()["components"]
        checkpoint = components.get("__checkpoint", {}).get("metrics", {})
        count = components[COUNT].get("metrics", {})
        spout = components[SPOUT]
        return {"checkpoint.rollbacks": checkpoint.get("checkpoint.rollbacks", 0),
                "checkpoint.failures": checkpoint.get("checkpoint.failures", 0),
                "checkpoint.committed_txid": checkpoint.get("checkpoint.committed_txid", 0),
                "state.rollbacks": count.get("state.rollbacks", 0),
                "spout.failed": spout.get("failed", 0), "spout.replayed": spout.get("replayed", 0)}


def namespace(what: str) -> str:
    return f"bench-{what}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- 1. throughput


@dataclass
class Throughput:
    steady: float
    """Sentences/s from the first count written to the last."""
    submitted: float
    """Sentences/s from submission to the last count written."""


def run_throughput(bench: Bench, label: str, run: int, values: list[bytes], expected: Counter[str],
                   partitions: int, stateful: bool) -> Throughput:
    n = len(values)
    space = namespace(f"{label}-{run}")
    config = ["-c", "spout.parallelism=2",
              *(bench.stateful(space) if stateful else ["-c", "count.stateful=false"])]
    with fresh_broker(bench.workdir / f"kafka-{label}-{run}", values, partitions) as broker:
        with bench.topology(f"wc-{label}-{run}", broker, config) as running:
            running.wait_acked(1, 120, "the first sentence acked")
            cpu = CpuMeter(bench.cpu_groups(broker))
            running.wait_acked(n, 900, "every sentence acked")
            busy = cpu.read()
            figures = running.figures()
        output = read_output(broker.bootstrap, "counts", partitions)
    steady = n / (output.last - output.first)
    rate = n / (output.last - running.submitted)
    notes = [f"counts {exactness(output.highest, expected)}"]
    if stateful:
        assert bench.redis is not None
        notes.append(f"state in Redis {exactness(state_in_redis(bench.redis.url, space), expected)}")
        notes.append(f"{figures['checkpoint.committed_txid']:.0f} checkpoints, "
                     f"{figures['checkpoint.rollbacks']:.0f} rollbacks, "
                     f"{figures['checkpoint.failures']:.0f} failed")
    if figures["spout.failed"]:
        notes.append(f"{figures['spout.failed']:,.0f} trees FAILED")
    print(f"{label:<9} (run {run}): {steady:>8,.0f} sentences/s  ({rate:,.0f} from submission)", flush=True)
    print(f"                   {'; '.join(notes)}", flush=True)
    print(f"                   {busy}", flush=True)
    return Throughput(steady, rate)


def measure_throughput(bench: Bench, n: int, repeat: int, partitions: int) -> None:
    values = sentences(n)
    expected = expected_counts(values)
    print(f"[throughput] {n:,} sentences on {partitions} partitions, 2 workers, -c spout.parallelism=2; "
          f"{repeat} pair(s) stateful (Redis) / stateless (-c count.stateful=false)", flush=True)
    runs: dict[bool, list[Throughput]] = {True: [], False: []}
    for run in range(1, repeat + 1):
        order = (False, True) if run % 2 else (True, False)
        for stateful in order:
            runs[stateful].append(run_throughput(bench, "stateful" if stateful else "stateless", run, values,
                                                 expected, partitions, stateful))
        with_state, without = runs[True][-1], runs[False][-1]
        print(f"  pair {run}: stateful/stateless {with_state.steady / without.steady:.0%}  "
              f"(from submission {with_state.submitted / without.submitted:.0%})", flush=True)
    medians = {s: statistics.median(t.steady for t in runs[s]) for s in runs}
    from_submission = {s: statistics.median(t.submitted for t in runs[s]) for s in runs}
    ratio = medians[True] / medians[False]
    print(f"[throughput] medians of {repeat}: stateful {medians[True]:,.0f}, stateless {medians[False]:,.0f} "
          f"sentences/s: stateful/stateless {ratio:.0%}  target >= {THROUGHPUT_TARGET:.0%}: "
          f"{'MET' if ratio >= THROUGHPUT_TARGET else 'MISSED'}  "
          f"(from submission {from_submission[True] / from_submission[False]:.0%})", flush=True)


# --------------------------------------------------------------------------- 2. recovery


class Progress:
    """Words counted for the first time, summed over time, from :attr:`Output.progress`."""

    def __init__(self, progress: Counter[int]) -> None:
        self.times = sorted(progress)
        self.sums = list(itertools.accumulate(progress[t] for t in self.times))

    def _upto(self, when: float) -> int:
        """Words counted before ``when`` (s since the epoch)."""
        at = bisect.bisect_left(self.times, when * 1000)
        return self.sums[at - 1] if at else 0

    def rate(self, start: float, stop: float) -> float:
        """Words counted for the first time per second between ``start`` and ``stop``."""
        return (self._upto(stop) - self._upto(start)) / (stop - start)


def measure_recovery(bench: Bench, n: int, timeout: float, partitions: int) -> None:
    assert bench.cluster is not None
    cluster = bench.cluster
    values = sentences(n)
    expected = expected_counts(values)
    per_sentence = sum(expected.values()) / n
    target = timeout + RECOVERY_MARGIN
    space = namespace("recovery")
    config = ["-c", "spout.parallelism=1", "-c", f"topology.message.timeout.secs={timeout:g}",
              *bench.stateful(space)]
    print(f"[recovery] {n:,} sentences on {partitions} partitions, stateful (Redis), 2 workers, "
          f"-c spout.parallelism=1, message timeout {timeout:g} s; kill -9 of the worker with a count "
          f"task and no spout task at {KILL_AT:.0%} acked", flush=True)
    with fresh_broker(bench.workdir / "kafka-recovery", values, partitions) as broker:
        with bench.topology("wc-recovery", broker, config) as running:
            running.wait_acked(1, 120, "the first sentence acked")
            running.wait_acked(int(KILL_AT * n), 900, f"{KILL_AT:.0%} of the sentences acked")
            spouts, counts = set(running.tasks[SPOUT]), set(running.tasks[COUNT])
            victim = next((w for w in running.status()["workers"]
                           if counts & set(w["tasks"]) and not spouts & set(w["tasks"])), None)
            if victim is None:
                print("[recovery] no worker holds a count task without a spout task: not measured", flush=True)
                return
            pid = cluster.worker_pids().get(victim["port"])
            if pid is None or pid != victim["pid"]:
                raise RuntimeError(f"the worker on port {victim['port']}: status says pid "
                                   f"{victim['pid']}, /proc says {pid}")
            killed_at = time.time()
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: cluster.worker_pids().get(victim["port"]) not in (None, pid), 60,
                     "the worker restarted", every=0.05)
            restarted_after = time.time() - killed_at
            running.wait_acked(n, 900, "every sentence acked")
            figures = running.figures()
        output = read_output(broker.bootstrap, "counts", partitions)
    assert bench.redis is not None
    state = state_in_redis(bench.redis.url, space)

    progress = Progress(output.progress)
    pre_start = output.first + WARMUP
    pre_rate = progress.rate(pre_start, killed_at) if killed_at > pre_start + 1 else 0.0
    threshold = 0.9 * pre_rate
    back: float | None = None
    step = 0
    while killed_at + step + WINDOW <= output.last:
        if progress.rate(killed_at + step, killed_at + step + WINDOW) >= threshold:
            back = step + WINDOW
            break
        step += 1
    if back is None:
        verdict = (f"NOT back to >= 90% before the input ran out, {output.last - killed_at:.1f} s after the kill: "
                   f"MISSED (raise --recovery-sentences)")
    else:
        verdict = (f"back to >= 90% after {back:.0f} s  target < {target:g} s: "
                   f"{'MET' if back < target else 'MISSED'}")
    print(f"[recovery] kill -9 of worker {victim['slot']} (tasks {victim['tasks']}; count tasks "
          f"{sorted(counts)}, spout {sorted(spouts)}) at {pre_rate / per_sentence:,.0f} sentences/s "
          f"({pre_rate:,.0f} words/s): {verdict}", flush=True)
    lasted = output.last - killed_at
    enough = back is not None and lasted >= back + 20
    print(f"           worker restarted after {restarted_after:.1f} s; the run went on {lasted:.0f} s after the "
          f"kill{'' if enough else ' (SHORT: less than 20 s past the recovery; raise --recovery-sentences)'}; "
          f"checkpoint.rollbacks {figures['checkpoint.rollbacks']:.0f}, state.rollbacks (count tasks, summed) "
          f"{figures['state.rollbacks']:.0f}, {figures['spout.failed']:,.0f} trees failed, "
          f"{figures['spout.replayed']:,.0f} replayed, {figures['checkpoint.failures']:.0f} checkpoints failed",
          flush=True)
    print(f"           final counts {exactness(output.highest, expected)}; state in Redis "
          f"{exactness(state, expected)}; {output.records:,} counts written for "
          f"{sum(expected.values()):,} words", flush=True)
    shown = range(-3, int(min(lasted, (back or lasted) + 5)))
    steps = [f"{s:+d}s {progress.rate(killed_at + s, killed_at + s + 1) / per_sentence:,.0f}"
             for s in shown if killed_at + s + 1 <= output.last]
    print("           sentences/s (words counted for the first time / words per sentence), by second "
          "from the kill: " + " | ".join(steps), flush=True)


# --------------------------------------------------------------------------- 3. restore


def words(count: int, seed: int = 5) -> list[str]:
    """``count`` distinct word-like keys: 3 to 10 lower-case letters and a number."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase
    return [f"{''.join(rng.choices(letters, k=rng.randint(3, 10)))}{i}" for i in range(count)]


def measure_restore(workdir: Path, keys: int) -> None:
    rng = random.Random(3)
    with RedisServer(workdir / "redis-restore") as server:
        topology = namespace("restore")
        writer = RedisProvider(server.url, topology)
        epoch = writer.begin_epoch()
        store = writer.store(COUNT)
        state = KeyValueState(COUNT, 0, 1, KEY_GROUPS)
        began = time.perf_counter()
        names = words(keys)
        committed: tuple[int, int] | None = None
        for txid, start in enumerate(range(0, keys, RESTORE_BATCH), 1):
            for word in names[start:start + RESTORE_BATCH]:
                state.put(word, rng.randint(1, 100_000))
            at = (epoch, txid)
            store.prepare(at, state.prepare(at), committed)
            writer.write_checkpoint({"epoch": epoch, "txid": txid, "time": time.time(), "positions": {}})
            state.committed(at)
            store.commit(at, state.owned_groups())
            committed = at
        written = dict(state.items())
        writer.close()
        memory = server.client().info("memory")["used_memory_human"]
        print(f"[restore] {keys:,} keys written in {KEY_GROUPS} key groups through prepare/commit "
              f"({keys // RESTORE_BATCH} checkpoints) in {time.perf_counter() - began:.1f} s; "
              f"Redis holds {memory}", flush=True)
        for attempt in range(1, 4):
            reader = RedisProvider(server.url, topology)  # a restarted worker's new connection
            try:
                restored = KeyValueState(COUNT, 0, 1, KEY_GROUPS)
                started = time.perf_counter()
                data = reader.store(COUNT).restore(committed, restored.owned_groups())
                read = time.perf_counter()
                restored.load(data)
                done = time.perf_counter()
            finally:
                reader.close()
            right = len(restored) == len(written) and all(restored.get(k) == v for k, v in written.items())
            seconds = done - started
            print(f"[restore] (run {attempt}) store.restore + KeyValueState.load of {len(restored):,} keys: "
                  f"{seconds:.2f} s ({read - started:.2f} + {done - read:.2f})  target < {RESTORE_TARGET:g} s: "
                  f"{'MET' if seconds < RESTORE_TARGET else 'MISSED'}; "
                  f"{'every key and value as written' if right else 'NOT AS WRITTEN'}", flush=True)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("throughput", "recovery", "restore"), help="run one part")
    parser.add_argument("--sentences", type=int, default=200_000, help="input of the throughput runs")
    parser.add_argument("--repeat", type=int, default=2, help="stateful/stateless pairs (default 2)")
    parser.add_argument("--recovery-sentences", type=int, default=1_000_000,
                        help="input of the recovery run: it must last well past the recovery")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="topology.message.timeout.secs of the recovery run (default 30)")
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys of the restore bench")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("-c", dest="config", action="append", default=[], metavar="KEY=VALUE",
                        help="topology config for every run")
    args = parser.parse_args()

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    began = time.monotonic()
    print(f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}; compare only figures of the same run",
          flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="streamflow-bench-state-") as tmp:
            workdir = Path(tmp)
            if args.only in (None, "throughput", "recovery"):
                with Bench(workdir, args.config).running() as bench:
                    if args.only in (None, "throughput"):
                        measure_throughput(bench, args.sentences, args.repeat, args.partitions)
                    if args.only in (None, "recovery"):
                        measure_recovery(bench, args.recovery_sentences, args.timeout, args.partitions)
            if args.only in (None, "restore"):
                measure_restore(workdir, args.keys)
    except KeyboardInterrupt:
        print("interrupted; everything is stopped", file=sys.stderr)
        return 130
    finally:
        print(f"total {time.monotonic() - began:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
