"""KafkaBolt against a real broker (Tansu, tests/kafka.py): its metrics, its writers and
their answers, and the records its options shape."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from cluster import wait_for
from kafka import KafkaBroker
from live import LiveRun
from servers import free_port
from streamflow_connectors.kafka import Backoff, KafkaBolt, KafkaSpout
from streamflow_connectors.kafka import sink as sink_module
from streamflow_connectors.kafka.records import encoder
from topics import produce, read_written

from streamflow import TaskContext, TopologyBuilder, run_local
from streamflow.testing import Ledger, ListSpout


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
        assert sum(w.rows for w in (*writing, taking)) == 200
        assert taking.rows > 100  # the first two batches went to the broker, the rest to it
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
        assert sink.instance._writer is None and writing[-1].rows >= 20
        (stats,) = run.tasks("sink")
        assert stats.executed == sum(w.rows for w in writing) < 200
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
                 and stats.acked + sink.instance._writing[0].rows == 200,
                 8, "every tuple acked but the stuck batch's")
        stuck = sink.instance._writing[0]
        assert stuck.rows and len(stuck.producer)  # the first batch still awaits its broker
        assert stats.failed == 0
    finally:
        run.stop()
    assert run.join(30) == "stopped"


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


def test_a_failed_write_of_text_under_the_bytes_format_fails_its_tuple() -> None:
    # librdkafka sends a str value as UTF-8 and reports the failed record with bytes: the
    # sink must match it to its tuple (it used to ack it, and the spout moved past it).
    ledger = Ledger()
    b = TopologyBuilder("unwritten-text")
    b.set_spout("rows", ListSpout([("hello", 7)], fields=("v", "k"), ledger=ledger, max_retries=0))
    b.set_bolt("sink", KafkaBolt(f"127.0.0.1:{free_port()}", "out", key_field="k", value_field="v",
                                 value_format="bytes", delivery_timeout=0.5)).shuffle_grouping("rows")
    result = run_local(b.build(), timeout=30)
    assert result.outcome == "finished", result.summary()
    assert ledger.failed == {0: 1} and not ledger.acked


def test_the_bytes_format_writes_bytes_and_refuses_what_is_neither_bytes_nor_text() -> None:
    encode = encoder("bytes")
    assert (encode(b"\xff"), encode("é"), encode(None)) == (b"\xff", "é".encode(), None)
    with pytest.raises(TypeError, match="value format 'bytes' takes bytes, str or None, not int"):
        encode(7)


def test_a_failed_write_fails_every_tuple_of_its_batch_the_written_ones_too(kafka: KafkaBroker, topic_prefix: str,
                                                                           readers: Any) -> None:
    # The broker refuses the record for a topic with an invalid name and takes the
    # others. The sink keeps only the anchors of what it wrote, not which record each
    # tuple made: all three tuples of the batch fail (at-least-once: the written two are
    # written again on a replay), none is acked, and the error names the refusal.
    out = f"{topic_prefix}out"
    kafka.create_topic(out, 1)
    ledger = Ledger()
    b = TopologyBuilder("partly-written")
    b.set_spout("rows", ListSpout([(out, "a"), ("bad topic!", "b"), (out, "c")], fields=("topic", "v"),
                                  ledger=ledger, max_retries=0))
    b.set_bolt("sink", KafkaBolt(kafka.bootstrap, topic_field="topic", value_field="v", value_format="str",
                                 delivery_timeout=5)).shuffle_grouping("rows")
    result = run_local(b.build(), timeout=30)
    assert result.outcome == "finished", result.summary()
    assert ledger.failed == {0: 1, 1: 1, 2: 1} and not ledger.acked
    assert sorted(r.value for r in read_written(readers, kafka.bootstrap, out, 2)) == [b"a", b"c"]
    error = result.component("sink").last_error
    assert error is not None and "1 writes failed: Broker: Invalid topic" in error.message, error


@pytest.mark.parametrize("option, value, error", [
    ("delivery_timeout", 0, "a delivery_timeout of at least 0.001 s, not 0"),
    ("delivery_timeout", -1, "a delivery_timeout of at least 0.001 s, not -1"),
    ("delivery_timeout", 0.0004, "a delivery_timeout of at least 0.001 s, not 0.0004"),
    ("delivery_timeout", float("nan"), "a delivery_timeout of at least 0.001 s, not nan"),
    ("linger_ms", -1, "a linger_ms of 0 or more, not -1"),
])
def test_the_sink_refuses_timings_librdkafka_would_misread(option: str, value: float, error: str) -> None:
    # librdkafka reads a message.timeout.ms of 0 as no timeout at all (a write to a broker
    # that is down would hold its tuple until the tuple timed out, with no error shown),
    # and refuses a negative linger.ms, but only when the worker creates the producer.
    with pytest.raises(ValueError, match=f"^KafkaBolt needs {error}$"):
        KafkaBolt("127.0.0.1:9092", "out", **{option: value})


@pytest.mark.parametrize("setting", [{"enable.idempotence": True}, {"max.in.flight.requests.per.connection": 1}],
                         ids=["idempotence", "one request in flight"])
def test_the_settings_for_strict_order_write_each_key_in_order(kafka: KafkaBroker, topic_prefix: str,
                                                               readers: Any, setting: dict[str, Any]) -> None:
    # The settings KafkaBolt's docstring gives for a partition's records in the order of
    # their tuples work with its own (acks=all, one batch per producer) on a real broker.
    topic = f"{topic_prefix}out"
    kafka.create_topic(topic, 4)
    ledger = Ledger()
    b = TopologyBuilder("in-order")
    b.set_spout("rows", ListSpout([(i % 8, i) for i in range(400)], fields=("k", "n"), ledger=ledger))
    b.set_bolt("sink", KafkaBolt(kafka.bootstrap, topic, key_field="k", value_field="n", config=setting)
               ).shuffle_grouping("rows")
    result = run_local(b.build({"topology.producer.batch.size": 5}), timeout=30)
    assert result.outcome == "finished", result.summary()
    assert len(ledger.acked) == 400 and not ledger.failed
    by_key: dict[bytes | None, list[int]] = {}
    for record in read_written(readers, kafka.bootstrap, topic, 400):
        by_key.setdefault(record.key, []).append(orjson.loads(record.value or b""))
    assert set(by_key) == {str(k).encode() for k in range(8)}
    assert all(values == sorted(values) and len(values) == 50 for values in by_key.values()), by_key


def test_ticks_reach_the_sink_and_write_nothing(kafka: KafkaBroker, topic_prefix: str, readers: Any) -> None:
    # topology.tick.tuple.freq.secs sends ticks to every bolt: a tick has none of the
    # sink's fields, and once failed as "could not be written" in every batch it ended.
    source, topic, n = f"{topic_prefix}in", f"{topic_prefix}out", 50
    produce(kafka, source, [json.dumps({"n": i}).encode() for i in range(n)], partitions=1)
    kafka.create_topic(topic, 1)
    b = TopologyBuilder("ticked")
    b.set_spout("source", KafkaSpout(kafka.bootstrap, [source]))
    b.set_bolt("sink", KafkaBolt(kafka.bootstrap, topic, value_field="value")).shuffle_grouping("source")
    run = LiveRun(b.build({"topology.tick.tuple.freq.secs": 0.05}), timeout=60)
    try:
        run.metrics_when("sink", lambda m: m["kafka.produced_records"] == n, 20, "every record written")
        wait_for(lambda: run.tasks("sink")[0].executed >= n + 3, 20, "three ticks")
        error = run.last_error("sink")
    finally:
        run.stop()
    assert run.join(30) == "stopped"
    assert error is None
    written = read_written(readers, kafka.bootstrap, topic, n)
    assert sorted(orjson.loads(r.value)["n"] for r in written) == list(range(n))
