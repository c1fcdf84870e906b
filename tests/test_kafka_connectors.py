"""The Kafka connectors (KafkaSpout, KafkaBolt) against a real broker: Tansu, tests/kafka.py.

The example topologies run through the real CLI in local mode (``-c kafka.stop_at_end=true``
ends the run at the end offsets seen at start) and on a real cluster (tests/cluster.py),
where the run goes on until killed, so the tests wait for the output to be complete. The
spout's guarantees (commit after ack, retries then dead letters, undecodable records,
recovery from a missing topic or broker) run on topologies built here, in this process.

Every test names its topics with ``topic_prefix``; the spouts' group ids default to
``<topology>-<component>`` and offsets are kept per topic, so tests never share offsets.
Input is written in big batches, except the last record of each partition, which goes in a
batch of its own: Tansu's high watermark is the base offset of a partition's last batch
plus one, so this keeps it right (see tests/kafka.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop
from cluster import Cluster, metric_samples, wait_for
from commands import ROOT, streamflow, summary_rows
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaBroker, KafkaRecord, moto_available
from servers import free_port
from streamflow_connectors.kafka import Backoff, KafkaBolt, KafkaSpout
from streamflow_connectors.kafka import sink as sink_module

from streamflow import BasicBolt, Bolt, TaskContext, Topology, TopologyBuilder, Tuple, run_local
from streamflow.loader import load_topology
from streamflow.stats import TaskStats
from streamflow.telemetry import add_metrics
from streamflow.testing import CollectBolt, Ledger, ListSpout
from streamflow.worker import Worker

WORDCOUNT = str(ROOT / "topologies" / "wordcount.py")
ETL = str(ROOT / "topologies" / "etl.py")
FAST = ["-c", "topology.message.timeout.secs=5"]


# -- writing and reading topics ---------------------------------------------------------------


def produce(kafka: KafkaBroker, topic: str, values: Sequence[bytes], partitions: int) -> None:
    """Create ``topic`` and write ``values[i]`` to partition ``i % partitions``: in big
    batches, but each partition's last record in a batch of its own (so that Tansu's high
    watermark, and with it ``stop_at_end``, is right)."""
    kafka.create_topic(topic, partitions)
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "linger.ms": 5,
                         "batch.num.messages": 10_000, "logger": Quiet()})
    last = {i % partitions: i for i in range(len(values))}
    for i, value in enumerate(values):
        if last[i % partitions] != i:
            producer.produce(topic, value, partition=i % partitions)
            if len(producer) >= 50_000:
                producer.poll(0.01)  # let librdkafka's queue drain below its bound
    assert producer.flush(30) == 0
    for partition, i in sorted(last.items()):
        producer.produce(topic, values[i], partition=partition)
        assert producer.flush(10) == 0


class Quiet:
    """A librdkafka logger that drops its lines (the outage tests stop brokers)."""

    def log(self, level: int, msg: str, *args: Any) -> None:
        pass


SEAL = b"__seal__"


class TopicReader:
    """Reads a topic from the beginning, picking up where it stopped at each ``poll()``.

    Tansu serves records only up to its high watermark, the base offset of a partition's
    last batch + 1, so the records after the first of a last batch stay invisible until
    another batch lands. Each poll therefore first appends a one-record "seal" batch to
    every partition (records keyed :data:`SEAL`, left out of ``records``). Even so, a
    consumer that has read for a while sometimes never sees a few records that a new
    consumer reads at once (2 of 28,788 once, after a kill -9 mid-run): a poll that finds
    nothing new, :data:`REREAD_AFTER` seconds after the last start, reads the topic again
    from the beginning, keeping only records not seen before. It starts at offset 0 rather
    than at the offset the broker names as earliest: in one failure a partition was read
    from offset 17 on, never 0-16, and that lookup is one way it could happen. A real
    broker needs none of this.
    """

    REREAD_AFTER = 5.0

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.records: list[KafkaRecord] = []
        self._seen: set[tuple[int, int]] = set()
        self._consumer: Consumer | None = None
        self._started = 0.0
        self._sealer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "logger": Quiet(),
                                 "message.timeout.ms": 2000})
        self._partitions: list[int] = []

    def _start(self) -> Consumer:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "streamflow-test-reader",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 100, "logger": Quiet(),
                             "auto.offset.reset": "earliest"})
        found = consumer.list_topics(timeout=10).topics.get(self.topic)
        assert found is not None and found.partitions, f"no topic {self.topic!r}"
        self._partitions = sorted(found.partitions)
        consumer.assign([TopicPartition(self.topic, p, 0) for p in self._partitions])
        return consumer

    def _seal(self) -> None:
        for partition in self._partitions:
            self._sealer.produce(self.topic, b"{}", SEAL, partition)
        self._sealer.flush(3)  # the broker may be away (an outage test): read what can be read

    def poll(self, wait: float = 0.1) -> list[KafkaRecord]:
        """The records that arrived since the last call (waiting up to ``wait`` s for one)."""
        if self._consumer is None:
            self._consumer = self._start()
            self._started = time.monotonic()
        self._seal()
        new: list[KafkaRecord] = []
        while True:
            got = [m for m in self._consumer.consume(20_000, timeout=wait) if m.error() is None]
            for m in got:
                if m.key() != SEAL and (m.partition(), m.offset()) not in self._seen:
                    self._seen.add((m.partition(), m.offset()))
                    new.append(KafkaRecord.of(m))
            if not got:
                break
            wait = 0.02
        self.records += new
        if not new and time.monotonic() - self._started >= self.REREAD_AFTER:
            self._consumer.close()
            self._consumer = None
        return new

    def describe(self) -> str:
        """Per partition: records read, gaps in their offsets, and the broker's low and high
        watermarks, to tell records never stored from records stored but not served."""
        offsets: dict[int, list[int]] = {}
        for record in self.records:
            offsets.setdefault(record.partition, []).append(record.offset)
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "streamflow-test-describe",
                             "logger": Quiet()})
        try:
            parts = []
            for partition, found in sorted(offsets.items()):
                found.sort()
                gaps = [(a + 1, b - 1) for a, b in zip(found, found[1:], strict=False) if b > a + 1]
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=5)
                parts.append(f"partition {partition}: {len(found)} read, offsets {found[0]}..{found[-1]}, "
                             f"gaps {gaps[:5]}, watermarks {low}..{high}")
                if found[0] > 0:  # ask once more for the first records, by offset
                    consumer.assign([TopicPartition(self.topic, partition, 0)])
                    first = consumer.poll(5)
                    served = "nothing" if first is None else first.error() or f"offset {first.offset()}"
                    parts[-1] += f", a fetch from offset 0 returns {served}"
            return "; ".join(parts)
        finally:
            consumer.close()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        self._sealer.purge()


@pytest.fixture
def readers() -> Iterator[Any]:
    """``readers(bootstrap, topic)`` makes a :class:`TopicReader` closed after the test."""
    made: list[TopicReader] = []

    def make(bootstrap: str, topic: str) -> TopicReader:
        made.append(TopicReader(bootstrap, topic))
        return made[-1]

    yield make
    for reader in made:
        reader.close()


def read_written(readers: Any, bootstrap: str, topic: str, count: int, timeout: float = 10.0) -> list[KafkaRecord]:
    """The records a topology wrote to ``topic``, sorted by partition and offset: those that
    arrived before ``count`` did or ``timeout`` s passed, so that a short count shows in the
    test's assertion. Read by a :class:`TopicReader`, which seals the partitions so that
    Tansu serves a last batch of several records (``KafkaBroker.consume_all`` does not: under
    load, it twice missed the 10 dead letters of one of two spout tasks)."""
    reader = readers(bootstrap, topic)
    deadline = time.monotonic() + timeout
    while len(reader.records) < count and time.monotonic() < deadline:
        reader.poll()
    return sorted(reader.records, key=lambda record: (record.partition, record.offset))


def header(record: Any, name: str) -> bytes | None:
    return next((bytes(v) for k, v in (record.headers or ()) if k == name), None)


# -- running topologies -----------------------------------------------------------------------


class Shared:
    """State shared by every task's copy of a test component (a deep copy returns it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.attempts: Counter[Any] = Counter()
        self.seen: list[Any] = []

    def __deepcopy__(self, memo: dict[int, Any]) -> Shared:
        return self


class LiveRun:
    """A topology run in local mode (one :class:`~streamflow.worker.Worker`, as
    ``run_local`` runs it) on a thread of its own, so that a test can act and look at the
    tasks' counters, errors and metrics while it runs."""

    def __init__(self, topology: Topology, timeout: float) -> None:
        self.topology, self.timeout = topology, timeout
        self.outcome: str | None = None
        self.error: BaseException | None = None
        self.worker: Worker | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="live-run", daemon=True)
        self._thread.start()
        assert self._started.wait(10), "the run did not start"

    def _main(self) -> None:
        async def main() -> None:
            self.worker = Worker(self.topology)
            self._stop, self._loop = asyncio.Event(), asyncio.get_running_loop()
            self._started.set()
            finish = asyncio.ensure_future(self.worker.run_until_finished())
            stop = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({finish, stop}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
                if finish.done():
                    finish.result()
                    self.outcome = "finished"
                else:
                    self.outcome = "stopped" if stop.done() else "timeout"
            finally:
                finish.cancel()
                stop.cancel()
                await self.worker.stop()

        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())
        except BaseException as exc:  # handed to join()
            self.error = exc
            self._started.set()

    def tasks(self, component: str) -> list[TaskStats]:
        assert self.worker is not None
        return [s for s in self.worker.stats() if s.component == component]

    def last_error(self, component: str) -> str | None:
        errors = [s.last_error for s in self.tasks(component) if s.last_error is not None]
        return max(errors, key=lambda e: e.time).message if errors else None

    def metrics(self, component: str) -> dict[str, Any]:
        """The component's metrics summed over its tasks, as ``status`` sums them."""
        assert self.worker is not None
        total: dict[str, Any] = {}
        for executor in self.worker.executors:
            if executor.component == component and getattr(executor, "started", False):
                add_metrics(total, executor.instance.metrics())  # type: ignore[attr-defined]
        return total

    def executor(self, component: str) -> Any:
        """The executor of the component's first task."""
        assert self.worker is not None
        return next(e for e in self.worker.executors if e.component == component)

    def instance(self, component: str) -> Any:
        """The component instance of the component's first task."""
        return self.executor(component).instance

    def metrics_when(self, component: str, condition: Callable[[dict[str, Any]], Any], timeout: float,
                     what: str) -> dict[str, Any]:
        """Wait until the component's metrics satisfy ``condition``; return them."""
        return wait_for(lambda: (m := self.metrics(component)) and condition(m) and m, timeout, what)  # type: ignore[no-any-return]

    def stop(self) -> None:
        """End the run (if it still runs)."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # it ended meanwhile

    def join(self, timeout: float) -> str:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the run did not end within {timeout:g} s"
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


# -- test data --------------------------------------------------------------------------------


def sentences(count: int, seed: int, words: tuple[int, int] = (1, 3)) -> tuple[list[bytes], Counter[str]]:
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(300)]
    expected: Counter[str] = Counter()
    values = []
    for i in range(count):
        chosen = rng.choices(vocabulary, k=rng.randint(*words))
        expected.update(chosen)
        values.append(json.dumps({"id": i, "text": " ".join(chosen)}).encode())
    return values, expected


def best_counts(records: Sequence[Any]) -> dict[str, int]:
    """The highest count written per word: its final count."""
    best: dict[str, int] = {}
    for record in records:
        r = json.loads(record.value)
        assert record.key == r["word"].encode()
        best[r["word"]] = max(best.get(r["word"], 0), r["count"])
    return best


def etl_events(count: int, seed: int) -> tuple[list[bytes], set[int], set[str], set[bytes]]:
    """ETL input: values, the valid ids, the malformed lines (not JSON, a missing field, a
    field of the wrong type) and the values that are not UTF-8 (the spout dead-letters those)."""
    rng = random.Random(seed)
    values: list[bytes] = []
    valid: set[int] = set()
    malformed: set[str] = set()
    not_utf8: set[bytes] = set()
    for i in range(count):
        draw = rng.random()
        if draw < 0.01:
            value = b"\xff\xfe event %d \xc3\x28" % i
            not_utf8.add(value)
        elif draw < 0.04:
            line = rng.choice([f"not json {i}", f'{{"id": {i}, "user": "u1"}}',
                               f'{{"id": "{i}", "user": "u2", "amount": 1}}',
                               f'{{"id": {i}, "user": "u3", "amount": "x"}}'])
            malformed.add(line)
            value = line.encode()
        else:
            event = {"id": i, "user": f"user{rng.randrange(40)}", "amount": rng.randint(1, 99)}
            value = json.dumps(event).encode()
            valid.add(i)
        values.append(value)
    return values, valid, malformed, not_utf8


def split_dead_letters(records: Sequence[Any]) -> tuple[Counter[str], Counter[bytes]]:
    """ETL's dead letters: lines the topology rejected ({"line", "error"} from its
    deadletter bolt) and raw values the spout sent itself (with origin headers)."""
    lines: Counter[str] = Counter()
    raw: Counter[bytes] = Counter()
    for record in records:
        if header(record, "origin.topic") is not None:
            raw[record.value] += 1
        else:
            lines[json.loads(record.value)["line"]] += 1
    return lines, raw


# -- 1. wordcount, exact counts ----------------------------------------------------------------


def test_kafka_wordcount_keeps_more_trees_in_flight_unless_told_otherwise() -> None:
    # Its trees wait for the broker's answers, so it sets 800 trees in flight per spout
    # task; a -c value still wins, and the file variant keeps the engine's default.
    bootstrap = f"127.0.0.1:{free_port()}"
    assert load_topology(WORDCOUNT, {"kafka.bootstrap": bootstrap}).config["topology.max.spout.pending"] == 800
    told = load_topology(WORDCOUNT, {"kafka.bootstrap": bootstrap, "topology.max.spout.pending": 200})
    assert told.config["topology.max.spout.pending"] == 200
    assert load_topology(WORDCOUNT, {}).config["topology.max.spout.pending"] == 500  # the engine's default


def test_wordcount_local_counts_50000_sentences_exactly(kafka: KafkaBroker, topic_prefix: str,
                                                        readers: Any) -> None:
    source, output = f"{topic_prefix}sentences", f"{topic_prefix}counts"
    values, expected = sentences(50_000, seed=1)
    produce(kafka, source, values, partitions=4)
    kafka.create_topic(output, 4)
    result = streamflow("local", WORDCOUNT, "-c", f"kafka.bootstrap={kafka.bootstrap}",
                        "-c", "kafka.stop_at_end=true", "-c", f"input.topic={source}",
                        "-c", f"output.topic={output}", "--timeout", "120")
    assert result.returncode == 0, result.stderr
    assert "finished in" in result.stderr, result.stderr
    rows = summary_rows(result.stderr)
    assert rows["sentences"][5] == "50000" and rows["sentences"][6] == "0", result.stderr
    reader = readers(kafka.bootstrap, output)
    total = sum(expected.values())
    try:
        wait_for(lambda: reader.poll() is not None and len(reader.records) >= total, 60, "every count written")
    except AssertionError as exc:  # say how far the reader got, for a failure seen under load
        raise AssertionError(f"{exc}: {len(reader.records):,} of {total:,} records read; "
                             f"{reader.describe()}") from None
    assert best_counts(reader.records) == dict(expected)
    assert len(reader.records) == total  # nothing replayed in a clean run
    assert kafka.committed("wordcount-sentences", source) == {p: 12_500 for p in range(4)}


# -- cluster ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kafka_cluster(zookeeper: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One nimbus and two supervisors of two slots, shared by this module's cluster tests."""
    c = Cluster(zookeeper.hosts, f"/streamflow-kafka-{os.getpid()}", tmp_path_factory.mktemp("cluster"),
                nimbus_count=1)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def cluster(kafka_cluster: Cluster) -> Iterator[Cluster]:
    """The shared cluster, emptied of topologies after the test."""
    yield kafka_cluster
    kafka_cluster.kill_all()


def submit(c: Cluster, topology: str, name: str, *options: str) -> None:
    result = c.cli("submit", topology, "--name", name, *options)
    assert result.returncode == 0, result.stderr


def test_wordcount_on_two_workers_counts_50000_sentences_exactly(
        cluster: Cluster, kafka: KafkaBroker, topic_prefix: str, readers: Any) -> None:
    source, output = f"{topic_prefix}sentences", f"{topic_prefix}counts"
    values, expected = sentences(50_000, seed=2)
    produce(kafka, source, values, partitions=4)
    kafka.create_topic(output, 4)
    submit(cluster, WORDCOUNT, "wc-kafka", "--workers", "2", "-c", f"kafka.bootstrap={kafka.bootstrap}",
           "-c", f"input.topic={source}", "-c", f"output.topic={output}", "-c", "spout.parallelism=2")
    reader = readers(kafka.bootstrap, output)
    wait_for(lambda: reader.poll(0.5) is not None and best_counts(reader.records) == dict(expected), 120,
             "exact word counts in the output topic")
    status = cluster.status("wc-kafka")
    assert len(status["workers"]) == 2 and all(w["alive"] for w in status["workers"])
    wait_for(lambda: cluster.status("wc-kafka")["components"]["sentences"]["acked"] == 50_000, 30,
             "every sentence acked at the spout")
    wait_for(lambda: kafka.committed("wordcount-sentences", source) == {p: 12_500 for p in range(4)}, 30,
             "every offset committed")

    def kafka_samples(name: str) -> dict[str, float]:
        """``streamflow_NAME`` from every worker's /metrics: label value -> value."""
        samples = [metric_samples(f"http://{w['host']}:{w['port']}") for w in status["workers"]]
        return {label: v for s in samples for (metric, labels), v in s.items() if metric == name
                for key, label in labels if key in ("partition", "client_id")}

    # The spout tasks' partitions (two per task, one task per worker) and the client id.
    wait_for(lambda: kafka_samples("streamflow_kafka_committed_offset") == {f"{source}/{p}": 12_500
                                                                            for p in range(4)},
             30, "each partition's committed offset in the workers' /metrics")
    consumed = [metric_samples(f"http://{w['host']}:{w['port']}").get(
        ("streamflow_kafka_consumed_records", (("client_id", "wordcount-sentences"), ("component", "sentences"),
                                               ("task", str(task)), ("topology", "wc-kafka"))), 0)
        for w in status["workers"] for task in w["tasks"]]
    assert sum(consumed) == 50_000  # the client id's records, counted by its two tasks


def test_etl_on_two_workers_survives_kill_9_of_a_spout_worker(
        cluster: Cluster, kafka: KafkaBroker, topic_prefix: str, readers: Any) -> None:
    source, clean, dlq = f"{topic_prefix}events", f"{topic_prefix}events-clean", f"{topic_prefix}events-dlq"
    values, valid, malformed, not_utf8 = etl_events(30_000, seed=3)
    produce(kafka, source, values, partitions=4)
    kafka.create_topic(clean, 4)
    kafka.create_topic(dlq, 1)
    submit(cluster, ETL, "etl-kafka", "--workers", "2", *FAST, "-c", "topology.max.spout.pending=50",
           "-c", f"kafka.bootstrap={kafka.bootstrap}", "-c", f"input.topic={source}",
           "-c", f"output.topic={clean}", "-c", f"deadletter.topic={dlq}", "-c", "spout.parallelism=2")
    out, dead = readers(kafka.bootstrap, clean), readers(kafka.bootstrap, dlq)
    wait_for(lambda: out.poll() is not None and len(out.records) > len(valid) // 10, 120,
             "a tenth of the events in events-clean")
    workers = cluster.status("etl-kafka")["workers"]
    description = json.loads(cluster.cli("describe", ETL, "-c", "kafka.bootstrap=x", "-c", "spout.parallelism=2",
                                         "-c", "topology.workers=2").stdout)
    spout_tasks = sorted(description["tasks"]["events"])
    victim = next(w for w in workers if set(spout_tasks) & set(w["tasks"]))
    index = spout_tasks.index(next(t for t in spout_tasks if t in victim["tasks"]))
    victim_partitions = list(range(4))[index::2]  # task i of n reads every n-th partition from i

    def committed() -> dict[int, int | None]:
        return kafka.committed("etl-events", source, victim_partitions)

    # Mid-run, with offsets committed: the restarted task resumes from them, not from the start.
    at_kill = wait_for(lambda: (c := committed()) and any(c.values()) and c, 60, "a commit of the victim's")
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = len(out.records)

    def ids() -> Counter[int]:
        return Counter(json.loads(r.value)["id"] for r in out.records)

    try:
        wait_for(lambda: out.poll(0.3) is not None and set(ids()) >= valid, 180, "every valid id in events-clean")
    except AssertionError as exc:  # say what was missing and what the topology reports
        components = cluster.status("etl-kafka")["components"]
        raise AssertionError(
            f"{exc}: {len(valid - set(ids())):,} of {len(valid):,} valid ids missing; "
            + "; ".join(f"{name} acked {c['acked']} failed {c['failed']} last error {c['last_error']}"
                        for name, c in components.items())) from None

    def dead_complete() -> bool:
        dead.poll(0.3)
        lines, raw = split_dead_letters(dead.records)
        return set(lines) >= malformed and set(raw) >= not_utf8

    wait_for(dead_complete, 60, "every malformed record in events-dlq")
    counted = ids()
    assert set(counted) == valid
    lines, raw = split_dead_letters(dead.records)
    assert set(lines) == malformed and set(raw) == not_utf8
    duplicates = sum(n - 1 for n in counted.values())
    print(f"\nkill -9 of worker {victim['slot']} (spout task {spout_tasks[index]}, committed {at_kill}) "
          f"after {killed_at} outputs: {duplicates} duplicate outputs of {len(valid)} valid ids; "
          f"{sum(n - 1 for n in lines.values()) + sum(n - 1 for n in raw.values())} duplicate dead letters")
    restarted = wait_for(lambda: cluster.worker_pids().get(victim["port"]), 30, "worker restarted")
    assert restarted != victim["pid"]


def test_quota_holds_across_two_spout_tasks_and_follows_set_config(
        cluster: Cluster, kafka: KafkaBroker, topic_prefix: str, readers: Any) -> None:
    rate, new_rate = 200, 400
    source, output = f"{topic_prefix}sentences", f"{topic_prefix}counts"
    # One word per sentence: one output record per sentence consumed.
    values = [json.dumps({"id": i, "text": f"w{i % 100}"}).encode() for i in range(16_000)]
    produce(kafka, source, values, partitions=4)
    kafka.create_topic(output, 4)
    quota = json.dumps({"wordcount-sentences": {"records_per_sec": rate}})
    submit(cluster, WORDCOUNT, "wc-quota", "--workers", "2", "-c", f"kafka.bootstrap={kafka.bootstrap}",
           "-c", f"input.topic={source}", "-c", f"output.topic={output}", "-c", "spout.parallelism=2",
           "-c", f"kafka.quotas={quota}")
    status = cluster.status("wc-quota")
    description = json.loads(cluster.cli("describe", WORDCOUNT, "-c", "kafka.bootstrap=x",
                                         "-c", "spout.parallelism=2", "-c", "topology.workers=2").stdout)
    spout_tasks = set(description["tasks"]["sentences"])
    assert len(status["workers"]) == 2
    assert all(len(spout_tasks & set(w["tasks"])) == 1 for w in status["workers"]), status["workers"]

    reader = readers(kafka.bootstrap, output)
    wait_for(lambda: reader.poll() and True, 60, "the first output")
    first = min(r.timestamp for r in reader.records) / 1000

    def consumed() -> float:
        metrics = cluster.api("status", "wc-quota")["components"]["sentences"].get("metrics", {})
        return float(metrics.get("kafka.consumed_records", {}).get("client_id=wordcount-sentences", 0))

    before = (time.time(), consumed())
    wait_for(lambda: reader.poll(0.5) is not None and time.time() > first + 11, 30, "11 s of output")
    after = (time.time(), consumed())
    stamps = sorted(r.timestamp / 1000 for r in reader.records)

    def rate_in(start: float, seconds: float) -> float:
        return sum(1 for t in stamps if start <= t < start + seconds) / seconds

    windows = [rate_in(first + 0.25 * i, 10.0) for i in range(5)]
    from_metrics = (after[1] - before[1]) / (after[0] - before[0])
    print(f"\nquota {rate}/s over 2 spout tasks: {[round(w) for w in windows]} records/s in 10 s windows "
          f"of output; {from_metrics:.0f}/s from the spout's kafka.consumed_records")
    assert max(windows) <= 1.2 * rate
    assert min(windows) >= 0.7 * rate  # the quota limits, it does not starve
    assert from_metrics <= 1.2 * rate

    quota = json.dumps({"wordcount-sentences": {"records_per_sec": new_rate}})
    result = cluster.cli("set-config", "wc-quota", "-c", f"kafka.quotas={quota}")
    assert result.returncode == 0, result.stderr
    changed = time.time()
    wait_for(lambda: reader.poll(0.5) is not None and time.time() > changed + 8, 30, "8 s of output")
    stamps = sorted(r.timestamp / 1000 for r in reader.records)
    followed = rate_in(changed + 2, 5.0)
    print(f"after set-config to {new_rate}/s: {followed:.0f} records/s")
    assert 0.7 * new_rate <= followed <= 1.2 * new_rate


# -- 3. commit after ack ----------------------------------------------------------------------


class HoldOne(Bolt):
    """Acks every tuple at once but the one at ``hold`` (partition, offset): that one it
    keeps, and acks on the first tick tuple after ``shared.release`` is set."""

    def __init__(self, shared: Shared, hold: tuple[int, int]) -> None:
        self.shared, self.hold = shared, hold

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.held: Tuple | None = None

    def process(self, tup: Tuple) -> None:
        if tup.is_tick():
            if self.held is not None and self.shared.release.is_set():
                self.ack(self.held)
                self.held = None
            return
        if (tup["partition"], tup["offset"]) == self.hold:
            self.held = tup
            return
        self.ack(tup)
        with self.shared.lock:
            self.shared.seen.append((tup["partition"], tup["offset"]))


def test_an_unacked_record_is_never_committed(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic, k = f"{topic_prefix}in", 100
    produce(kafka, topic, [json.dumps({"n": i}).encode() for i in range(600)], partitions=2)
    shared = Shared()
    b = TopologyBuilder("commit-after-ack")
    b.set_spout("source", KafkaSpout(kafka.bootstrap, [topic], commit_interval=0.2, stop_at_end=True))
    b.set_bolt("hold", HoldOne(shared, (0, k))).shuffle_grouping("source")
    run = LiveRun(b.build({"topology.tick.tuple.freq.secs": 0.1, "topology.message.timeout.secs": 120}),
                  timeout=60)
    group = "commit-after-ack-source"  # the default group id: <topology>-<component>
    wait_for(lambda: len(shared.seen) == 599, 30, "every record but one acked")
    committed = wait_for(lambda: (c := kafka.committed(group, topic)) and c[1] == 300 and (c[0] or 0) >= k and c,
                         10, "the commits after the acks")
    assert committed == {0: k, 1: 300}
    p0, p1 = f"partition={topic}/0", f"partition={topic}/1"
    metrics = run.metrics_when("source", lambda m: m["kafka.committed_offset"] == {p0: k, p1: 300}, 10,
                               "the commits confirmed in the metrics")
    assert metrics["kafka.in_flight"] == 1
    assert metrics["kafka.uncommitted"] == {p0: 300 - k, p1: 0}
    assert metrics["kafka.lag"] == {p0: 300 - k, p1: 0}  # what a restart would read again
    # Three more commit checks run (each sets the next one an interval on), and none asks past k.
    spout = run.instance("source")
    first_check = spout._next_commit
    wait_for(lambda: spout._next_commit >= first_check + 3 * 0.2, 10, "three more commit checks")
    assert spout._partitions[topic, 0].commit_sent == k
    assert kafka.committed(group, topic) == {0: k, 1: 300}
    shared.release.set()
    wait_for(lambda: kafka.committed(group, topic) == {0: 300, 1: 300}, 10, "the commit past k once it is acked")
    assert run.join(30) == "finished"


def test_a_stuck_record_pauses_its_partition_at_max_uncommitted(kafka: KafkaBroker, topic_prefix: str) -> None:
    # What a restart reads again is every offset from the commit point on, done or not:
    # that is what max_uncommitted bounds, not just the records in flight.
    topic, k, bound = f"{topic_prefix}in", 5, 20
    produce(kafka, topic, [json.dumps({"n": i}).encode() for i in range(200)], partitions=1)
    shared = Shared()
    b = TopologyBuilder("bounded")
    b.set_spout("source", KafkaSpout(kafka.bootstrap, [topic], max_uncommitted=bound, stop_at_end=True))
    b.set_bolt("hold", HoldOne(shared, (0, k))).shuffle_grouping("source")
    run = LiveRun(b.build({"topology.tick.tuple.freq.secs": 0.1, "topology.message.timeout.secs": 120}),
                  timeout=60)
    wait_for(lambda: len(shared.seen) >= k + bound - 1, 20, "the records up to the bound")
    # The spout holds the partition at its bound and has paused it in librdkafka: nothing
    # more can come while offset k is out.
    spout = run.instance("source")
    wait_for(lambda: spout._held == {(topic, 0)} and (topic, 0) in spout._paused, 10, "the partition paused")
    assert run.tasks("source")[0].emitted == k + bound
    assert len(shared.seen) == k + bound - 1  # offsets 0 .. k+bound-1 but k
    metrics = run.metrics("source")
    assert metrics["kafka.uncommitted"] == {f"partition={topic}/0": bound} and metrics["kafka.in_flight"] == 1
    shared.release.set()
    assert run.join(30) == "finished"
    assert len(shared.seen) == 199 and kafka.committed("bounded-source", topic) == {0: 200}


class HoldAll(Bolt):
    """Keeps every tuple, acking none."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def process(self, tup: Tuple) -> None:
        with self.shared.lock:
            self.shared.seen.append(tup)


def test_the_spout_keeps_to_max_spout_pending(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}in"
    produce(kafka, topic, [json.dumps({"n": i}).encode() for i in range(300)], partitions=2)
    shared = Shared()
    b = TopologyBuilder("pending")
    b.set_spout("source", KafkaSpout(kafka.bootstrap, [topic]))
    b.set_bolt("hold", HoldAll(shared)).shuffle_grouping("source")
    run = LiveRun(b.build({"topology.max.spout.pending": 10, "topology.message.timeout.secs": 60}), timeout=60)
    try:
        wait_for(lambda: len(shared.seen) >= 10, 20, "ten tuples held")
        # The executor holds the spout at max-spout-pending: it calls next_tuple no more
        # until trees complete, and none will.
        executor = run.executor("source")
        wait_for(lambda: executor._held, 10, "the spout held at max-spout-pending")
        assert len(shared.seen) == 10
        assert run.tasks("source")[0].emitted == 10 and run.metrics("source")["kafka.in_flight"] == 10
    finally:
        run.stop()
    assert run.join(30) == "stopped"


# -- 4. retries, then the dead-letter topic -----------------------------------------------------


class FailSome(BasicBolt):
    """Fails (raises for) the records whose id is in ``bad``; counts every attempt."""

    def __init__(self, shared: Shared, bad: set[int]) -> None:
        self.shared, self.bad = shared, bad

    def process(self, tup: Tuple) -> None:
        id_ = tup["value"]["id"]
        self.shared.attempts[id_] += 1
        if id_ in self.bad:
            raise ValueError(f"id {id_} is bad")


def test_failing_records_are_retried_with_backoff_then_dead_lettered(kafka: KafkaBroker, topic_prefix: str,
                                                                     readers: Any) -> None:
    topic, dlq, partitions = f"{topic_prefix}in", f"{topic_prefix}dlq", 3
    values = [json.dumps({"id": i}).encode() for i in range(300)]
    bad = set(range(7, 300, 10))
    produce(kafka, topic, values, partitions)
    kafka.create_topic(dlq, 1)
    shared = Shared()
    backoff = Backoff(initial=0.05, multiplier=2.0, maximum=0.2, max_retries=3)
    b = TopologyBuilder("retries")
    b.set_spout("source", KafkaSpout(kafka.bootstrap, [topic], backoff=backoff, dead_letter_topic=dlq,
                                     stop_at_end=True), 2)
    b.set_bolt("check", FailSome(shared, bad), 2).shuffle_grouping("source")
    started = time.monotonic()
    result = run_local(b.build(), timeout=60)
    assert result.outcome == "finished", result.summary()
    assert time.monotonic() - started >= 0.05 + 0.1 + 0.2  # the backoff between retries
    spout = result.component("source")
    assert spout.acked == 300 - len(bad) and spout.failed == 4 * len(bad), result.summary()
    assert {i: shared.attempts[i] for i in bad} == {i: 4 for i in bad}  # one try and three retries
    assert all(shared.attempts[i] == 1 for i in range(300) if i not in bad)

    dead = read_written(readers, kafka.bootstrap, dlq, len(bad))
    assert sorted(json.loads(r.value or b"")["id"] for r in dead) == sorted(bad)
    for r in dead:
        i = json.loads(r.value or b"")["id"]
        assert header(r, "origin.topic") == topic.encode()
        assert header(r, "origin.partition") == str(i % partitions).encode()
        assert header(r, "origin.offset") == str(i // partitions).encode()
        assert header(r, "error") == b"failed 4 times"
    assert kafka.committed("retries-source", topic) == {p: 100 for p in range(partitions)}


# -- 5. undecodable records -------------------------------------------------------------------


def test_undecodable_records_are_dead_lettered_at_once(kafka: KafkaBroker, topic_prefix: str,
                                                       readers: Any) -> None:
    topic, dlq_json, dlq_text = f"{topic_prefix}in", f"{topic_prefix}dlq-json", f"{topic_prefix}dlq-text"
    not_json = [b"{not json %d" % i for i in range(5)]
    not_utf8 = [b"\xff\xfe\xfd %d" % i for i in range(5)]
    good = [json.dumps({"id": i}).encode() for i in range(100)]
    values = good[:50] + not_json + good[50:] + not_utf8
    random.Random(5).shuffle(values)
    produce(kafka, topic, values, partitions=2)
    kafka.create_topic(dlq_json, 1)
    kafka.create_topic(dlq_text, 1)
    ledger = Ledger()
    b = TopologyBuilder("undecodable")
    b.set_spout("as_json", KafkaSpout(kafka.bootstrap, [topic], value_format="json", dead_letter_topic=dlq_json,
                                      stop_at_end=True))
    b.set_spout("as_text", KafkaSpout(kafka.bootstrap, [topic], value_format="str", dead_letter_topic=dlq_text,
                                      stop_at_end=True))
    b.set_bolt("collect", CollectBolt(ledger)).shuffle_grouping("as_json").shuffle_grouping("as_text")
    result = run_local(b.build(), timeout=60)
    assert result.outcome == "finished", result.summary()
    assert result.component("as_json").failed == result.component("as_text").failed == 0  # no retries
    assert result.component("as_json").acked == 100 and result.component("as_text").acked == 105

    received = Counter((tup.source, tup["value"] if tup.source == "as_text" else json.dumps(tup["value"]))
                       for _, tup in ledger.received)
    assert received == Counter({("as_json", v.decode()): 1 for v in good}) + Counter(
        {("as_text", v.decode()): 1 for v in good + not_json})
    dead_json = read_written(readers, kafka.bootstrap, dlq_json, 10)
    assert sorted(r.value or b"" for r in dead_json) == sorted(not_json + not_utf8)
    assert all((header(r, "error") or b"").startswith(b"value is not JSON") for r in dead_json)
    dead_text = read_written(readers, kafka.bootstrap, dlq_text, 5)
    assert sorted(r.value or b"" for r in dead_text) == sorted(not_utf8)
    assert all((header(r, "error") or b"").startswith(b"value is not UTF-8") for r in dead_text)
    for r in dead_json + dead_text:
        assert header(r, "origin.topic") == topic.encode()
        offset = int(header(r, "origin.offset") or b"-1")
        partition = int(header(r, "origin.partition") or b"-1")
        assert values[offset * 2 + partition] == r.value
    for group in ("undecodable-as_json", "undecodable-as_text"):
        assert kafka.committed(group, topic) == {0: 55, 1: 55}


def test_a_dead_letter_that_could_not_be_written_is_written_later(kafka: KafkaBroker, topic_prefix: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The first write is refused as librdkafka refuses one when its local queue is full;
    # the record must stay uncommitted and go out at the next round.
    from streamflow_connectors.kafka import deadletters

    attempts: list[bytes | None] = []

    class QueueFullOnce(deadletters.Producer):  # type: ignore[misc,name-defined]
        def produce(self, topic: str, value: bytes | None = None, *args: Any, **kwargs: Any) -> None:
            attempts.append(value)
            if len(attempts) == 1:
                raise BufferError("Local: Queue full")
            super().produce(topic, value, *args, **kwargs)

    monkeypatch.setattr(deadletters, "Producer", QueueFullOnce)
    topic, dlq = f"{topic_prefix}in", f"{topic_prefix}dlq"
    produce(kafka, topic, [b'{"n": 1}', b"not json", b'{"n": 2}'], partitions=1)
    kafka.create_topic(dlq, 1)
    ledger = Ledger()
    result = run_local(collect_topology("flaky", kafka.bootstrap, [topic], ledger, dead_letter_topic=dlq,
                                        stop_at_end=True), timeout=30)
    assert result.outcome == "finished", result.summary()
    assert attempts == [b"not json", b"not json"]
    assert "Queue full" in (result.component("source").last_error or "").message  # type: ignore[union-attr]
    assert [r.value for r in kafka.consume_all(dlq, count=1, timeout=10)] == [b"not json"]
    assert kafka.committed("flaky-source", topic) == {0: 3}


# -- 6. a broker restart ----------------------------------------------------------------------


@pytest.mark.skipif(not moto_available(), reason="moto's S3 server is not installed: "
                    "pip install 'moto[s3]' flask flask-cors")
def test_etl_reports_a_broker_outage_and_recovers_losing_nothing(tmp_path: Path, readers: Any) -> None:
    # S3 storage keeps records and offsets across the restart. Its end offsets lag (see
    # tests/kafka.py), so no stop_at_end: the run goes on until every id is out. The ETL
    # example runs here in this process (as `streamflow local` runs it) to watch its errors.
    with KafkaBroker(tmp_path / "kafka", persistent=True) as broker:
        values = [json.dumps({"id": i, "user": f"u{i % 13}", "amount": 1}).encode() for i in range(4000)]
        produce(broker, "events", values, partitions=4)
        broker.create_topic("events-clean", 4)
        broker.create_topic("events-dlq", 1)
        topology = load_topology(ETL, {"kafka.bootstrap": broker.bootstrap, "topology.max.spout.pending": 200,
                                       "topology.message.timeout.secs": 5})
        run = LiveRun(topology, timeout=150)
        try:
            out = readers(broker.bootstrap, "events-clean")
            wait_for(lambda: out.poll() is not None and len(out.records) >= 500, 60, "500 events out")
            broker.kill()  # an outage: SIGKILL, no clean shutdown
            before = len(out.records)
            error = wait_for(lambda: run.last_error("events"), 30, "the spout's error while the broker is away")
            assert f"Kafka at {broker.bootstrap}" in error, error
            broker.start()
            wait_for(lambda: out.poll(0.5) is not None and len({json.loads(r.value)["id"] for r in out.records})
                     == len(values), 120, "every id in events-clean after the restart")
        finally:
            run.stop()
        assert run.join(60) == "stopped"
        broker.kill()  # Tansu may take its whole stop timeout (5 s) to honour a SIGTERM
        ids = Counter(json.loads(r.value)["id"] for r in out.records)
        print(f"\nbroker killed after {before} outputs, spout error: {error!r}; restarted: "
              f"{sum(ids.values()) - len(ids)} duplicates")
        assert set(ids) == set(range(len(values)))


# -- unknown topic, unreachable broker ----------------------------------------------------------


def collect_topology(name: str, bootstrap: str, topics: Sequence[str] = (), ledger: Ledger | None = None,
                     **spout: Any) -> Topology:
    b = TopologyBuilder(name)
    b.set_spout("source", KafkaSpout(bootstrap, topics, **spout))
    b.set_bolt("collect", CollectBolt(ledger or Ledger())).shuffle_grouping("source")
    return b.build()


def test_an_unknown_topic_is_reported_until_it_exists(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic, ledger = f"{topic_prefix}later", Ledger()
    run = LiveRun(collect_topology("unknown", kafka.bootstrap, [topic], ledger, stop_at_end=True), timeout=60)
    error = wait_for(lambda: run.last_error("source"), 20, "the spout's error")
    assert f"unknown topic {topic!r}" in error and kafka.bootstrap in error and "retrying in" in error
    produce(kafka, topic, [json.dumps({"n": i}).encode() for i in range(50)], partitions=2)
    assert run.join(30) == "finished"
    assert sorted(tup["value"]["n"] for _, tup in ledger.received) == list(range(50))


def test_an_unreachable_broker_is_reported_until_it_is_up(tmp_path: Path, topic_prefix: str,
                                                          readers: Any) -> None:
    late = KafkaBroker(tmp_path / "late", port=free_port())
    topic, output, ledger = f"{topic_prefix}in", f"{topic_prefix}out", Ledger()
    b = TopologyBuilder("unreachable")
    b.set_spout("source", KafkaSpout(late.bootstrap, [topic], stop_at_end=True))
    b.set_bolt("collect", CollectBolt(ledger)).shuffle_grouping("source")
    b.set_bolt("sink", KafkaBolt(late.bootstrap, output, fields=["offset", "value"])).shuffle_grouping("source")
    run = LiveRun(b.build(), timeout=60)  # the sink's broker is away too: it must not stop the run
    try:
        error = wait_for(lambda: run.last_error("source"), 20, "the spout's error")
        assert f"Kafka at {late.bootstrap}" in error and "retrying in" in error, error
        late.start()
        late.create_topic(output, 1)
        produce(late, topic, [json.dumps({"n": i}).encode() for i in range(50)], partitions=2)
        assert run.join(30) == "finished"
        assert sorted(tup["value"]["n"] for _, tup in ledger.received) == list(range(50))
        out = readers(late.bootstrap, output)
        wait_for(lambda: out.poll() is not None and len(out.records) >= 50, 10, "the sink's records")
        assert sorted(json.loads(r.value)["value"]["n"] for r in out.records) == list(range(50))
    finally:
        run.stop()
        late.kill()  # Tansu may take its whole stop timeout (5 s) to honour a SIGTERM


def test_a_topic_pattern_picks_up_new_topics(kafka: KafkaBroker, topic_prefix: str) -> None:
    ledger = Ledger()
    first, second = f"{topic_prefix}p-a", f"{topic_prefix}p-b"
    produce(kafka, first, [b'{"n": 1}', b'{"n": 2}'], partitions=1)
    run = LiveRun(collect_topology("pattern", kafka.bootstrap, (), ledger,
                                   topic_pattern=re.escape(topic_prefix) + "p-.*", metadata_refresh=0.3),
                  timeout=60)
    try:
        wait_for(lambda: len(ledger.received) == 2, 20, "the first topic's records")
        produce(kafka, second, [b'{"n": 3}', b'{"n": 4}', b'{"n": 5}'], partitions=2)
        wait_for(lambda: len(ledger.received) == 5, 20, "the new topic's records")
        assert sorted((tup["topic"], tup["value"]["n"]) for _, tup in ledger.received) == [
            (first, 1), (first, 2), (second, 3), (second, 4), (second, 5)]
    finally:
        run.stop()
    assert run.join(30) == "stopped"


# -- metrics (per partition, per client id, the sink's) --------------------------------------------


class FailIds(BasicBolt):
    """Fails (raises for) the records whose value's ``n`` is in ``bad``."""

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad

    def process(self, tup: Tuple) -> None:
        if tup["value"]["n"] in self.bad:
            raise ValueError(f"n {tup['value']['n']} is bad")


def test_spout_and_sink_metrics_after_consuming_a_known_set_of_records(kafka: KafkaBroker,
                                                                        topic_prefix: str) -> None:
    topic, output, partitions, per_partition = f"{topic_prefix}in", f"{topic_prefix}out", 3, 100
    values = [json.dumps({"n": i}).encode() for i in range(partitions * per_partition)]
    produce(kafka, topic, values, partitions)  # each partition's last record alone: Tansu's watermark is right
    kafka.create_topic(output, 1)
    b = TopologyBuilder("metrics")
    b.set_spout("source", KafkaSpout(kafka.bootstrap, [topic], commit_interval=0.1), 2)
    b.set_bolt("sink", KafkaBolt(kafka.bootstrap, output, value_field="value"), 2).shuffle_grouping("source")
    run = LiveRun(b.build(), timeout=60)
    labels = [f"partition={topic}/{p}" for p in range(partitions)]
    try:
        everything, nothing = dict.fromkeys(labels, per_partition), dict.fromkeys(labels, 0)
        metrics = run.metrics_when("source", lambda m: m["kafka.committed_offset"] == everything
                                   and m["kafka.lag"] == nothing, 30, "every offset committed, no lag")
        sink = run.metrics_when("sink", lambda m: m["kafka.produced_records"] == len(values), 10,
                                "every record written")
    finally:
        run.stop()
    assert run.join(30) == "stopped"
    client = "client_id=metrics-source"  # the default client id: <topology>-<component>
    assert metrics["kafka.uncommitted"] == dict.fromkeys(labels, 0)
    assert metrics["kafka.retries"] == metrics["kafka.dead_letters"] == dict.fromkeys(labels, 0)
    assert metrics["kafka.consumed_records"] == {client: len(values)}  # both tasks' counts, summed
    assert metrics["kafka.consumed_bytes"] == {client: sum(len(v) for v in values)}
    assert metrics["kafka.throttled_seconds"] == {client: 0}
    written = sum(len(orjson.dumps(json.loads(v))) for v in values)  # the sink writes the decoded value again
    assert sink == {"kafka.produced_records": len(values), "kafka.produced_bytes": written,
                    "kafka.delivery_errors": 0}


def test_spout_metrics_count_retries_and_dead_letters(kafka: KafkaBroker, topic_prefix: str,
                                                      readers: Any) -> None:
    topic, dlq, partitions = f"{topic_prefix}in", f"{topic_prefix}dlq", 2
    values = [json.dumps({"n": i}).encode() for i in range(100)]
    bad = set(range(3, 100, 10))  # ids 3, 13, ...: partition i % 2 == 1
    produce(kafka, topic, values, partitions)
    kafka.create_topic(dlq, 1)
    b = TopologyBuilder("failing")
    b.set_spout("source", KafkaSpout(kafka.bootstrap, [topic], dead_letter_topic=dlq, commit_interval=0.1,
                                     backoff=Backoff(initial=0.02, maximum=0.05, max_retries=2)))
    b.set_bolt("check", FailIds(bad)).shuffle_grouping("source")
    run = LiveRun(b.build(), timeout=60)
    p0, p1 = f"partition={topic}/0", f"partition={topic}/1"
    try:
        metrics = run.metrics_when("source", lambda m: m["kafka.committed_offset"] == {p0: 50, p1: 50}, 30,
                                   "every offset committed, the bad ones after their dead letters")
    finally:
        run.stop()
    assert run.join(30) == "stopped"
    assert metrics["kafka.dead_letters"] == {p0: 0, p1: len(bad)}
    assert metrics["kafka.retries"] == {p0: 0, p1: 2 * len(bad)}  # two retries each, then the dead-letter topic
    assert metrics["kafka.lag"] == {p0: 0, p1: 0} and metrics["kafka.uncommitted"] == {p0: 0, p1: 0}
    assert len(read_written(readers, kafka.bootstrap, dlq, len(bad))) == len(bad)


def test_throttled_seconds_grow_while_over_quota(kafka: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}in"
    produce(kafka, topic, [json.dumps({"n": i}).encode() for i in range(1000)], partitions=1)
    b = TopologyBuilder("throttled")
    b.set_spout("source", KafkaSpout(kafka.bootstrap, [topic], records_per_sec=100))
    b.set_bolt("collect", CollectBolt(Ledger())).shuffle_grouping("source")
    run = LiveRun(b.build(), timeout=60)
    client = "client_id=throttled-source"
    try:
        # A burst of one second's worth (100), then 100/s: 300 records take about 2 s more.
        started = time.monotonic()
        metrics = run.metrics_when("source", lambda m: m["kafka.consumed_records"][client] >= 300, 20,
                                   "300 records consumed")
        elapsed = time.monotonic() - started
    finally:
        run.stop()
    assert run.join(30) == "stopped"
    throttled = metrics["kafka.throttled_seconds"][client]
    print(f"\n300 records at 100/s in {elapsed:.2f} s, {throttled:.2f} s of it throttled")
    assert elapsed >= 1.8  # the quota held
    assert 0.5 * (elapsed - 1) <= throttled <= elapsed  # paused most of the time once the burst was spent


def test_sink_metrics_count_writes_the_broker_never_acknowledged(kafka: KafkaBroker, topic_prefix: str) -> None:
    # The sink's broker is away (a closed port): every write times out, its tuple fails,
    # the spout retries it once and then drops it (no dead-letter topic).
    topic, nowhere = f"{topic_prefix}in", f"127.0.0.1:{free_port()}"
    produce(kafka, topic, [json.dumps({"n": i}).encode() for i in range(10)], partitions=1)
    b = TopologyBuilder("unwritten")
    b.set_spout("source", KafkaSpout(kafka.bootstrap, [topic], backoff=Backoff(initial=0.05, max_retries=1)))
    b.set_bolt("sink", KafkaBolt(nowhere, "out", delivery_timeout=0.5)).shuffle_grouping("source")
    run = LiveRun(b.build({"topology.message.timeout.secs": 30}), timeout=60)
    try:
        sink = run.metrics_when("sink", lambda m: m["kafka.delivery_errors"] == 20, 30,
                                "two failed writes per record")
        source = run.metrics_when("source", lambda m: m["kafka.dead_letters"] == {f"partition={topic}/0": 10}, 10,
                                  "every record dropped after its retry")
        error = run.last_error("sink")
    finally:
        run.stop()
    assert run.join(30) == "stopped"
    assert sink["kafka.produced_records"] == sink["kafka.produced_bytes"] == 0
    assert source["kafka.retries"] == {f"partition={topic}/0": 10}
    assert error is not None and f"Kafka at {nowhere}" in error, error
    assert "writes failed: Local: Message timed out" in error, error


def sink_run(name: str, sink: KafkaBolt) -> tuple[LiveRun, Any]:
    """A live run of 200 tuples, 5 per spout round, into ``sink``, and the sink's executor."""
    b = TopologyBuilder(name)
    b.set_spout("rows", ListSpout([(i,) for i in range(200)], fields=("n",)))
    b.set_bolt("sink", sink).shuffle_grouping("rows")
    run = LiveRun(b.build({"topology.producer.batch.size": 5}), timeout=60)
    assert run.worker is not None
    return run, next(e for e in run.worker.executors if e.component == "sink")


def three_writers_with_no_broker(name: str) -> tuple[LiveRun, Any]:
    """:func:`sink_run` into a KafkaBolt of three writers whose broker is away (no write
    answered before its 10 s delivery timeout)."""
    return sink_run(name, KafkaBolt(f"127.0.0.1:{free_port()}", "out", delivery_timeout=10, writers=3))


def test_the_sink_takes_new_batches_while_writers_await_the_broker() -> None:
    # The broker is away, so no write is answered before the 10 s delivery timeout. The
    # spout emits 5 tuples per round, so batches are small: with three writers, two
    # batches await the broker and the third writer takes every batch after them.
    run, sink = three_writers_with_no_broker("writers")
    try:
        wait_for(lambda: run.tasks("sink")[0].executed == 200, 8, "every tuple taken by the sink")
        writing, taking = sink.instance._writing, sink.instance._writer
        assert len(writing) == 2 and taking is not None
        assert sum(len(w.tuples) for w in (*writing, taking)) == 200
        assert len(taking.tuples) > 100  # the first two batches went to the broker, the rest to it
        (stats,) = run.tasks("sink")
        assert stats.acked == stats.failed == 0  # nothing answered yet
    finally:
        run.stop()
    assert run.join(30) == "stopped"
    with pytest.raises(ValueError, match="at least one writer"):
        KafkaBolt(f"127.0.0.1:{free_port()}", "out", writers=0)


def test_a_writer_that_took_its_share_waits_for_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    # As above, but a writer takes at most 20 records while the others await answers:
    # then all three await the broker and the sink waits, holding the rest back.
    monkeypatch.setattr(sink_module, "OPEN_WRITER_RECORDS", 20)
    run, sink = three_writers_with_no_broker("writers-bounded")
    try:
        wait_for(lambda: sink.started and len(sink.instance._writing) == 3, 8, "three writers awaiting the broker")
        writing = sink.instance._writing
        assert sink.instance._writer is None and len(writing[-1].tuples) >= 20
        (stats,) = run.tasks("sink")
        assert stats.executed == sum(len(w.tuples) for w in writing) < 200
        assert stats.acked == stats.failed == 0
    finally:
        run.stop()
    assert run.join(30) == "stopped"


class FirstWriterToNowhere(KafkaBolt):
    """A KafkaBolt whose first writer's producer dials a port where no broker listens."""

    async def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        await super().prepare(config, context)
        self._free[-1] = sink_module._Writer({"bootstrap.servers": f"127.0.0.1:{free_port()}",
                                              "acks": "all", "linger.ms": 1, "message.timeout.ms": 10_000})


def test_a_batch_stuck_on_a_broker_does_not_hold_back_the_answers_of_later_ones(
        kafka: KafkaBroker, topic_prefix: str) -> None:
    # The sink polls only its oldest batch, but every tenth look polls all of them: the
    # batches after one stuck on a broker that is down are acked as their broker answers,
    # not after the stuck one's 10 s delivery timeout.
    topic = f"{topic_prefix}out"
    kafka.create_topic(topic, 1)
    run, sink = sink_run("stuck-writer", FirstWriterToNowhere(kafka.bootstrap, topic, delivery_timeout=10,
                                                             writers=3))
    try:
        (stats,) = run.tasks("sink")
        wait_for(lambda: stats.executed == 200 and bool(sink.instance._writing)
                 and stats.acked + len(sink.instance._writing[0].tuples) == 200,
                 8, "every tuple acked but the stuck batch's")
        stuck = sink.instance._writing[0]
        assert stuck.tuples and len(stuck.producer)  # the first batch still awaits its broker
        assert stats.failed == 0
    finally:
        run.stop()
    assert run.join(30) == "stopped"


# -- the sink's records ---------------------------------------------------------------------------


def test_the_sink_writes_records_shaped_by_its_options(kafka: KafkaBroker, topic_prefix: str,
                                                       readers: Any) -> None:
    a, b_, fixed, whole = (f"{topic_prefix}{name}" for name in ("a", "b", "fixed", "whole"))
    for topic in (a, b_, fixed, whole):
        kafka.create_topic(topic, 1)
    rows = [(a, 7, "seven", 1.5), (b_, "k", "kay", None), (a, None, "none", [1, 2])]
    ledger = Ledger()
    b = TopologyBuilder("shapes")
    b.set_spout("rows", ListSpout(rows, fields=("dest", "id", "name", "extra"), ledger=ledger))
    b.set_bolt("per_tuple", KafkaBolt(kafka.bootstrap, topic_field="dest", key_field="id",
                                      fields=["extra", "name"])).shuffle_grouping("rows")
    b.set_bolt("text", KafkaBolt(kafka.bootstrap, fixed, value_field="name", value_format="str")
               ).shuffle_grouping("rows")
    b.set_bolt("whole", KafkaBolt(kafka.bootstrap, whole)).shuffle_grouping("rows")
    result = run_local(b.build(), timeout=30)
    assert result.outcome == "finished", result.summary()
    assert len(ledger.acked) == 3 and not ledger.failed

    def read(topic: str, count: int) -> Counter[tuple[bytes | None, bytes | None]]:
        return Counter((r.key, r.value) for r in read_written(readers, kafka.bootstrap, topic, count))

    assert read(a, 2) == Counter([(b"7", b'{"extra":1.5,"name":"seven"}'),
                                  (None, b'{"extra":[1,2],"name":"none"}')])
    assert read(b_, 1) == Counter([(b"k", b'{"extra":null,"name":"kay"}')])
    assert read(fixed, 3) == Counter([(None, b"kay"), (None, b"none"), (None, b"seven")])
    assert read(whole, 3) == Counter(
        (None, orjson.dumps(dict(zip(("dest", "id", "name", "extra"), row, strict=True)))) for row in rows)


def test_the_sink_fails_tuples_without_its_fields(kafka: KafkaBroker, topic_prefix: str) -> None:
    kafka.create_topic(f"{topic_prefix}out", 1)
    ledger = Ledger()
    b = TopologyBuilder("missing")
    b.set_spout("rows", ListSpout([("x",)], fields=("name",), ledger=ledger, max_retries=0))
    b.set_bolt("sink", KafkaBolt(kafka.bootstrap, f"{topic_prefix}out", key_field="user")).shuffle_grouping("rows")
    result = run_local(b.build(), timeout=30)
    assert result.outcome == "finished", result.summary()
    assert ledger.failed and not ledger.acked
    error = result.component("sink").last_error
    assert error is not None and "stream rows:default has no field 'user' (fields: name)" in error.message


# -- the spout's quota share, without a broker --------------------------------------------------


def test_each_task_takes_its_share_of_the_client_ids_quota() -> None:
    async def opened(config: Mapping[str, Any], **kwargs: Any) -> KafkaSpout:
        spout = KafkaSpout("127.0.0.1:9", ["t"], **kwargs)
        await spout.open(config, TaskContext("wc", "sentences", 5, {"sentences": (4, 5)}))
        return spout

    quotas = {"kafka.quotas": {"wc-sentences": {"records_per_sec": 200, "bytes_per_sec": 1000}}}
    spout = asyncio.run(opened(quotas))
    assert (spout.quota.bytes_rate, spout.quota.records_rate) == (500, 100)
    spout.reconfigure({"kafka.quotas": {"wc-sentences": {"records_per_sec": 50}}})
    assert (spout.quota.bytes_rate, spout.quota.records_rate) == (None, 25)
    spout.reconfigure({"kafka.quotas": {}})  # no entry: back to the constructor's rates
    assert (spout.quota.bytes_rate, spout.quota.records_rate) == (None, None)
    own = asyncio.run(opened({}, records_per_sec=10, client_id="mine"))
    assert own.quota.records_rate == 5
    own.reconfigure({"kafka.quotas": {"mine": {"records_per_sec": 2}}})
    assert own.quota.records_rate == 1
    with pytest.raises(ValueError, match="kafka.quotas"):
        own.reconfigure({"kafka.quotas": "200"})
    KafkaSpout("127.0.0.1:9", ["t"]).reconfigure(quotas)  # before open: nothing to do yet
