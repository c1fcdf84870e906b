"""KafkaSpout against a real broker (Tansu, tests/kafka.py): commit after ack, the bound on
uncommitted offsets, max-spout-pending, retries then dead letters, undecodable records,
recovery from a missing topic or broker, topic patterns, its metrics and its quota share.

The topologies are built here and run in this process (``run_local``, or
:class:`live.LiveRun` to act on them while they run). Every test names its topics with
``topic_prefix``; the spouts' group ids default to ``<topology>-<component>`` and offsets
are kept per topic, so tests never share offsets.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from cluster import wait_for
from commands import assert_one_line_error, streamflow
from confluent_kafka import KafkaError
from kafka import KafkaBroker
from live import LiveRun, Shared
from servers import free_port
from streamflow_connectors.kafka import Backoff, KafkaBolt, KafkaSpout, commits
from streamflow_connectors.kafka.assignment import Change
from streamflow_connectors.kafka.deadletters import DeadLetters
from streamflow_connectors.kafka.offsets import PartitionOffsets
from streamflow_connectors.kafka.records import Record
from test_kafka_fetcher import StandInConsumer
from test_kafka_intake import StandInMessage
from topics import header, produce, read_written

from streamflow import BasicBolt, Bolt, TaskContext, Topology, TopologyBuilder, Tuple, run_local
from streamflow.testing import CollectBolt, Ledger


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
    first_check = spout._commits.next_at
    wait_for(lambda: spout._commits.next_at >= first_check + 3 * 0.2, 10, "three more commit checks")
    assert spout._assignment.partitions[topic, 0].commit_sent == k
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
    fetcher = spout._fetcher
    wait_for(lambda: fetcher.held == {(topic, 0)} and (topic, 0) in fetcher.paused, 10, "the partition paused")
    assert run.tasks("source")[0].emitted == k + bound
    assert len(shared.seen) == k + bound - 1  # offsets 0 .. k+bound-1 but k
    metrics = run.metrics("source")
    assert metrics["kafka.uncommitted"] == {f"partition={topic}/0": bound} and metrics["kafka.in_flight"] == 1
    shared.release.set()
    assert run.join(30) == "finished"
    assert len(shared.seen) == 199 and kafka.committed("bounded-source", topic) == {0: 200}


def refresh(run: LiveRun, spout: KafkaSpout, then: Callable[[], None] = lambda: None) -> None:
    """Run the spout's metadata refresh, then ``then``, on the run's loop (between two calls
    of ``next_tuple``). It must succeed at once: a spout with a long ``metadata_refresh``
    would try again only that much later (and librdkafka, given a refresh interval above
    about 715 s, took 1 to 30 s to find a new topic's leaders: see LIBRDKAFKA_REFRESH_MAX)."""
    async def once() -> None:
        await spout._refresh()
        then()

    loop = run._loop
    assert loop is not None
    asyncio.run_coroutine_threadsafe(once(), loop).result(30)


def test_a_partition_paused_at_its_bound_resumes_after_a_reassignment(kafka: KafkaBroker,
                                                                      topic_prefix: str) -> None:
    # librdkafka keeps a partition paused across assign(): a refresh that reassigns while
    # a partition is paused must not leave it paused once it has room again.
    first, second, k, bound = f"{topic_prefix}p-a", f"{topic_prefix}p-b", 2, 10
    produce(kafka, first, [json.dumps({"n": i}).encode() for i in range(100)], partitions=1)
    shared = Shared()
    b = TopologyBuilder("reassigned")
    b.set_spout("source", KafkaSpout(kafka.bootstrap, topic_pattern=re.escape(topic_prefix) + "p-.*",
                                     max_uncommitted=bound, metadata_refresh=3600))
    b.set_bolt("hold", HoldOne(shared, (0, k))).shuffle_grouping("source")
    run = LiveRun(b.build({"topology.tick.tuple.freq.secs": 0.1, "topology.message.timeout.secs": 120}),
                  timeout=60)
    try:
        wait_for(lambda: len(shared.seen) >= k + bound - 1, 20, "the records up to the bound")
        spout = run.instance("source")
        fetcher = spout._fetcher
        wait_for(lambda: (first, 0) in fetcher.held and (first, 0) in fetcher.paused, 10, "the partition paused")
        produce(kafka, second, [b'{"n": 1000}', b'{"n": 1001}'], partitions=1)

        # Between two calls of next_tuple: the refresh finds the new topic and reassigns,
        # then the held record is done before the next fetch.
        refresh(run, spout, then=lambda: spout.ack((first, 0, k)))
        assert spout._assignment.assigned == [(first, 0), (second, 0)]
        wait_for(lambda: len(shared.seen) == 99 + 2, 20, "every record but the held one, of both topics")
    finally:
        shared.release.set()
        run.stop()
    assert run.join(30) == "stopped"


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


class FailN(BasicBolt):
    """Fails (raises for) the tuples whose ``n`` is in ``bad``; records the others' ``n``."""

    def __init__(self, shared: Shared, bad: set[int]) -> None:
        self.shared, self.bad = shared, bad

    def process(self, tup: Tuple) -> None:
        if tup["n"] in self.bad:
            raise ValueError(f"n {tup['n']} is bad")
        with self.shared.lock:
            self.shared.seen.append(tup["n"])


def test_records_that_emit_refuses_are_dead_lettered_and_the_rest_flow_on(kafka: KafkaBroker, topic_prefix: str,
                                                                         readers: Any) -> None:
    # record_to_values gives two values for a spout that declares one field: emit raises.
    # Records 3 and 17 do so at once; record 8, which the bolt fails, on its retry.
    topic, dlq = f"{topic_prefix}in", f"{topic_prefix}dlq"
    produce(kafka, topic, [json.dumps({"n": i}).encode() for i in range(30)], partitions=1)
    kafka.create_topic(dlq, 1)
    calls: Counter[int] = Counter()

    def values(record: Record) -> tuple[int, ...]:
        n = json.loads(record.value or b"")["n"]
        calls[n] += 1
        return (n, n) if n in (3, 17) or (n == 8 and calls[n] > 1) else (n,)

    shared = Shared()
    b = TopologyBuilder("refused")
    b.set_spout("source", KafkaSpout(kafka.bootstrap, [topic], record_to_values=values, fields=["n"],
                                     dead_letter_topic=dlq, backoff=Backoff(initial=0.01, max_retries=3),
                                     stop_at_end=True))
    b.set_bolt("check", FailN(shared, {8})).shuffle_grouping("source")
    result = run_local(b.build(), timeout=30)
    assert result.outcome == "finished", result.summary()
    assert sorted(shared.seen) == [n for n in range(30) if n not in (3, 8, 17)]
    assert calls[8] == 2  # emitted, failed, refused on its first retry: never retried again
    dead = read_written(readers, kafka.bootstrap, dlq, 3)
    assert sorted(int(header(r, "origin.offset") or b"-1") for r in dead) == [3, 8, 17]
    for r in dead:
        assert (header(r, "error") or b"").startswith(b"ValueError: component 'source' emitted 2 values"), r
    assert kafka.committed("refused-source", topic) == {0: 30}


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


def test_a_topic_found_after_the_start_is_read_from_its_earliest_offset(kafka: KafkaBroker,
                                                                         topic_prefix: str) -> None:
    # start="latest" applies to the partitions of the first assignment: one found later was
    # found up to metadata_refresh seconds late, and its latest offset would skip those.
    first, second, ledger = f"{topic_prefix}p-a", f"{topic_prefix}p-b", Ledger()
    produce(kafka, first, [b'{"n": 1}', b'{"n": 2}'], partitions=1)
    run = LiveRun(collect_topology("late", kafka.bootstrap, (), ledger, start="latest", metadata_refresh=3600,
                                   topic_pattern=re.escape(topic_prefix) + "p-.*"), timeout=60)
    try:
        spout = run.instance("source")
        wait_for(lambda: (a := getattr(spout, "_assignment", None)) is not None and a.assigned == [(first, 0)], 20,
                 "the first assignment")
        kafka.produce(first, [b'{"n": 3}'])
        produce(kafka, second, [b'{"n": 4}', b'{"n": 5}', b'{"n": 6}'], partitions=2)
        refresh(run, spout)  # finds the second topic
        wait_for(lambda: len(ledger.received) == 4, 20, "the records written after the start")
        assert sorted((tup["topic"], tup["value"]["n"]) for _, tup in ledger.received) == [
            (first, 3), (second, 4), (second, 5), (second, 6)]
    finally:
        run.stop()
    assert run.join(30) == "stopped"


def test_committed_offsets_are_committed_again_though_they_did_not_move(kafka: KafkaBroker, topic_prefix: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A broker expires the offsets of a group without members (the spout's, as it assigns
    # its partitions itself) after offsets.retention.minutes: Tansu does not, so another
    # client overwrites the offset, and the spout must commit its point again.
    monkeypatch.setattr(commits, "RECOMMIT_INTERVAL", 0.3)
    topic, group, ledger = f"{topic_prefix}in", "recommit-source", Ledger()
    produce(kafka, topic, [json.dumps({"n": i}).encode() for i in range(10)], partitions=1)
    run = LiveRun(collect_topology("recommit", kafka.bootstrap, [topic], ledger, commit_interval=0.1), timeout=60)
    try:
        wait_for(lambda: kafka.committed(group, topic) == {0: 10}, 20, "the commit of every record")
        kafka.commit(group, topic, {0: 3})  # synchronous: it raises if the broker refused it
        wait_for(lambda: kafka.committed(group, topic) == {0: 10}, 10, "the commit again")
    finally:
        run.stop()
    assert run.join(30) == "stopped"


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


def opened(config: Mapping[str, Any], **kwargs: Any) -> KafkaSpout:
    """A spout of topic ``t``, opened as task 5 of 4..8 of ``wc``'s ``sentences`` (no broker
    is asked anything before its first ``next_tuple``)."""
    spout = KafkaSpout("127.0.0.1:9", ["t"], **kwargs)
    asyncio.run(spout.open(config, TaskContext("wc", "sentences", 5, {"sentences": (4, 5)})))
    return spout


@pytest.mark.parametrize("option, message", [
    ({"max_uncommitted": 0}, "max_uncommitted must be at least 1, got 0"),
    ({"fetch_records": -5}, "fetch_records must be at least 1, got -5"),
    ({"records_per_sec": -1}, "records_per_sec must be at least 0 (0 stops the spout), got -1"),
    ({"bytes_per_sec": -0.5}, "bytes_per_sec must be at least 0 (0 stops the spout), got -0.5"),
    ({"metadata_refresh": 0}, "metadata_refresh must be a positive number of seconds, got 0"),
])
def test_bad_options_are_refused_when_the_spout_is_made(option: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        KafkaSpout("127.0.0.1:9", ["t"], **option)
    assert str(refused.value) == message
    KafkaSpout("127.0.0.1:9", ["t"], records_per_sec=0, bytes_per_sec=0)  # a rate of 0 is a quota


def test_a_topology_with_a_bad_spout_option_is_refused_as_one_line(tmp_path: Path) -> None:
    topology = tmp_path / "bad.py"
    topology.write_text(
        "from streamflow import TopologyBuilder\n"
        "from streamflow_connectors.kafka import KafkaSpout\n"
        "from streamflow.testing import CollectBolt, Ledger\n\n"
        "def build(config):\n"
        "    b = TopologyBuilder('bad')\n"
        "    b.set_spout('source', KafkaSpout('127.0.0.1:9', ['t'], max_uncommitted=0))\n"
        "    b.set_bolt('collect', CollectBolt(Ledger())).shuffle_grouping('source')\n"
        "    return b.build()\n")
    assert_one_line_error(streamflow("describe", str(topology), timeout=60),
                          "ValueError: max_uncommitted must be at least 1, got 0")


def test_each_task_takes_its_share_of_the_client_ids_quota() -> None:
    quotas = {"kafka.quotas": {"wc-sentences": {"records_per_sec": 200, "bytes_per_sec": 1000}}}
    spout = opened(quotas)
    assert (spout.quota.bytes_rate, spout.quota.records_rate) == (500, 100)
    spout.reconfigure({"kafka.quotas": {"wc-sentences": {"records_per_sec": 50}}})
    assert (spout.quota.bytes_rate, spout.quota.records_rate) == (None, 25)
    spout.reconfigure({"kafka.quotas": {}})  # no entry: back to the constructor's rates
    assert (spout.quota.bytes_rate, spout.quota.records_rate) == (None, None)
    own = opened({}, records_per_sec=10, client_id="mine")
    assert own.quota.records_rate == 5
    own.reconfigure({"kafka.quotas": {"mine": {"records_per_sec": 2}}})
    assert own.quota.records_rate == 1
    KafkaSpout("127.0.0.1:9", ["t"]).reconfigure(quotas)  # before open: nothing to do yet


# -- the spout's bookkeeping against a stand-in consumer -----------------------------------
#
# For what Tansu cannot show: gaps in a partition's offsets (no retention, compaction or
# transactions; DeleteRecords fails) and a log that restarts below what was read (a fetch
# past its end gets no answer rather than OFFSET_OUT_OF_RANGE).


def reading(fetched_to: int, partitions: int = 1, **kwargs: Any) -> tuple[KafkaSpout, StandInConsumer]:
    """An opened spout that has taken partitions t/0.. up to ``fetched_to``, all of it done."""
    spout, consumer = opened({}, **kwargs), StandInConsumer()
    spout._fetcher.consumer = cast(Any, consumer)
    spout._assignment.assigned = [("t", p) for p in range(partitions)]
    spout._assignment.partitions.update({("t", p): PartitionOffsets(fetched_to) for p in range(partitions)})
    return spout, consumer


def test_a_partition_that_leaves_is_committed_and_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    spout, consumer = reading(0, partitions=2, backoff=Backoff(initial=0.01))
    spout._fetcher.take([StandInMessage("t", p, offset) for p in (0, 1) for offset in range(4)])
    spout._fetcher.buffer.clear()  # emitted: offsets 0-3 of both partitions in flight
    for offset in (0, 1):
        spout.ack(("t", 1, offset))
    spout.fail(("t", 1, 2))  # waits for its retry
    spout._fetcher.take([StandInMessage("t", 1, 4)])  # waits to be emitted

    async def topic_deleted(_: Any) -> Change:  # the broker's metadata has only t/0 left
        return Change(mine=[("t", 0)], starts={}, ends={}, left=[("t", 1)])

    monkeypatch.setattr(spout._assignment, "change", topic_deleted)
    asyncio.run(spout._refresh())
    assert consumer.commits == [("t", 1, 2)]  # what is done of it
    assert consumer.assigned == [("t", 0, 4)] and spout._assignment.assigned == [("t", 0)]
    assert list(spout._assignment.partitions) == [("t", 0)] and not spout._fetcher.buffer
    assert not spout._redelivery.retries.failures
    assert len(spout._redelivery.retries) == 0  # its retry is no longer scheduled
    spout.ack(("t", 1, 3))  # records of the partition that left: acked or failed to no effect
    spout.fail(("t", 1, 2))
    assert not spout._emit_retry(time.monotonic() + 1)  # when the retry scheduled before it left is due
    assert not spout._redelivery.retries.failures and list(spout._assignment.partitions) == [("t", 0)]


def test_partitions_stay_with_their_task_when_a_topic_is_added(kafka: KafkaBroker, topic_prefix: str) -> None:
    # Every n-th partition of all of them in (topic, partition) order moved p-b/0 from task
    # 0 to task 1 when p-a was created: the old task kept its state and retries.
    first, second, ledger = f"{topic_prefix}p-b", f"{topic_prefix}p-a", Ledger()
    produce(kafka, first, [b'{"n": 1}', b'{"n": 2}'], partitions=1)
    b = TopologyBuilder("stable")
    b.set_spout("source", KafkaSpout(kafka.bootstrap, topic_pattern=re.escape(topic_prefix) + "p-.*",
                                     metadata_refresh=3600, commit_interval=0.1), 2)
    b.set_bolt("collect", CollectBolt(ledger)).shuffle_grouping("source")
    run = LiveRun(b.build(), timeout=60)
    try:
        wait_for(lambda: len(ledger.received) == 2, 20, "the first topic's records")
        assert run.worker is not None
        spouts = [cast(Any, e).instance for e in run.worker.executors if e.component == "source"]
        produce(kafka, second, [b'{"n": 3}'], partitions=1)
        for spout in spouts:
            refresh(run, spout)
        kafka.produce(first, [b'{"n": 4}', b'{"n": 5}'])
        wait_for(lambda: len(ledger.received) >= 5, 20, "the records written since")
    finally:
        run.stop()
    assert run.join(30) == "stopped"
    values = Counter((tup["topic"], tup["value"]["n"]) for _, tup in ledger.received)
    assert values == Counter([(first, 1), (first, 2), (second, 3), (first, 4), (first, 5)])
    assert len({tup.source_task for _, tup in ledger.received if tup["topic"] == first}) == 1


def test_a_partition_whose_end_lies_past_its_last_record_is_read_to_its_end() -> None:
    # The end offset seen at the start is 100, and 99 is a transaction's commit marker,
    # which librdkafka never serves: its end of partition at 100 says all was served.
    spout, consumer = reading(0, stop_at_end=True)
    spout._fetcher.end_offsets[("t", 0)] = 100
    spout._fetcher.take([StandInMessage("t", 0, offset) for offset in range(99)])
    spout._fetcher.buffer.clear()
    for offset in range(99):
        spout.ack(("t", 0, offset))
    assert not spout.exhausted()
    spout._fetcher.take([StandInMessage("t", 0, 100, KafkaError(KafkaError._PARTITION_EOF))])
    assert spout.exhausted() and spout._errors.last is None
    assert spout._assignment.partitions["t", 0].to_commit() == 100


def test_ends_of_partitions_are_not_errors(kafka: KafkaBroker, topic_prefix: str) -> None:
    # With stop_at_end, librdkafka reports each partition's end (enable.partition.eof; set
    # here too, so that the old spout shows what it did with them: Tansu has no
    # transactions to show what they are for).
    topic, k, shared = f"{topic_prefix}in", 5, Shared()
    produce(kafka, topic, [json.dumps({"n": i}).encode() for i in range(40)], partitions=2)
    b = TopologyBuilder("ends")
    b.set_spout("source", KafkaSpout(kafka.bootstrap, [topic], stop_at_end=True, commit_interval=0.1,
                                     config={"enable.partition.eof": True}))
    b.set_bolt("hold", HoldOne(shared, (0, k))).shuffle_grouping("source")
    run = LiveRun(b.build({"topology.tick.tuple.freq.secs": 0.1}), timeout=60)
    wait_for(lambda: len(shared.seen) == 39, 20, "every record but one acked")
    # Five more commit checks, each with a fetch: librdkafka has served both ends by then.
    spout = run.instance("source")
    first_check = spout._commits.next_at
    wait_for(lambda: spout._commits.next_at >= first_check + 5 * 0.1, 10, "five more commit checks")
    assert run.last_error("source") is None
    shared.release.set()
    assert run.join(30) == "finished"
    assert run.last_error("source") is None and kafka.committed("ends-source", topic) == {0: 20, 1: 20}


def test_dead_letters_queued_at_close_are_written(kafka: KafkaBroker, topic_prefix: str, readers: Any) -> None:
    dlq, done = f"{topic_prefix}dlq", list[Any]()
    kafka.create_topic(dlq, 1)
    dead = DeadLetters(kafka.bootstrap, dlq, "closing-dlq", None, done.append)
    record = StandInMessage("in", 2, 7)
    dead.add(record, "value is not JSON")  # queued by the last next_tuple: close sends it
    asyncio.run(dead.drain(5))
    assert done == [record] and not dead
    [letter] = read_written(readers, kafka.bootstrap, dlq, 1)
    assert (header(letter, "origin.partition"), header(letter, "origin.offset")) == (b"2", b"7")
