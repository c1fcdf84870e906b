"""The output collector: routing, anchoring and acker choice, without a running worker."""

from __future__ import annotations

import asyncio
import functools
import operator
from typing import Any

import pytest

from streamflow import BasicBolt, KeyValueState, StatefulBolt, TopologyBuilder, Tuple
from streamflow.acking import PendingTrees
from streamflow.collector import BoltOutputCollector, SpoutOutputCollector
from streamflow.inbox import ACK_ACK, ACK_FAIL, ACK_INIT
from streamflow.stats import TaskStats
from streamflow.testing import ListSpout
from streamflow.tuples import Origin


class Sink(BasicBolt):
    pass


class Recorder:
    """A transport that keeps what it was given."""

    loads = None

    def __init__(self) -> None:
        self.control: list[tuple[int, str, Any]] = []
        self.tuples: list[tuple[int, str, list[Any], list[Any]]] = []

    async def send_tuples(self, task: int, origin: Any, values: list[Any], anchors: list[Any]) -> None:
        self.tuples.append((task, origin.stream, values, anchors))

    def send_control(self, task: int, kind: str, payload: Any) -> None:
        self.control.append((task, kind, payload))


def test_a_spout_picks_roots_whose_acker_runs_in_its_worker() -> None:
    builder = TopologyBuilder("ackers")
    builder.set_spout("source", ListSpout([(1,)], ["n"]))
    builder.set_bolt("sink", Sink(), 2).shuffle_grouping("source")
    topology = builder.build({"topology.acker.executors": 4})
    layout = topology.task_layout()
    spout_task = layout["source"][0]
    local_acker = layout["__acker"][2]
    transport = Recorder()
    collector = SpoutOutputCollector(topology, "source", spout_task, transport, {spout_task, local_acker},
                                     TaskStats("source", spout_task), pending=PendingTrees())
    for i in range(200):
        collector.emit((i,), msg_id=i)
    collector._flush_control()
    assert {task for task, kind, _ in transport.control if kind == ACK_INIT} == {local_acker}
    roots = [root for _, _, inits in transport.control for root, _, _ in inits]
    assert len(set(roots)) == 200  # still distinct random ids


class TwoStreams(BasicBolt):
    outputs = {"default": ["word"], "pairs": ["left", "right"]}


def test_a_flush_sends_each_streams_batch_in_emit_order_with_its_anchors() -> None:
    builder = TopologyBuilder("batches")
    builder.set_spout("source", ListSpout([(1,)], ["n"]))
    builder.set_bolt("two", TwoStreams()).shuffle_grouping("source")
    sink = builder.set_bolt("sink", Sink())
    sink.global_grouping("two")
    sink.global_grouping("two", "pairs")
    topology = builder.build()
    layout = topology.task_layout()
    task, target = layout["two"][0], layout["sink"][0]
    transport = Recorder()
    collector = BoltOutputCollector(topology, "two", task, transport, {task}, TaskStats("two", task))
    collector.current = Tuple(("in",), Origin("source", layout["source"][0], "default", ("n",)), (77, 5))
    emit = collector.anchored_emitter()
    for i in range(3):
        emit((f"w{i}",))
        emit((f"l{i}", f"r{i}"), "pairs")
    asyncio.run(collector.flush())
    assert [(t, stream, values) for t, stream, values, _ in transport.tuples] == [
        (target, "default", [("w0",), ("w1",), ("w2",)]),
        (target, "pairs", [("l0", "r0"), ("l1", "r1"), ("l2", "r2")]),
    ]
    anchors = [a for _, _, _, batch in transport.tuples for a in batch]
    assert all(root == 77 for root, _ in anchors)
    assert functools.reduce(operator.xor, (edge for _, edge in anchors)) == collector.current.ack_val
    asyncio.run(collector.flush())  # nothing new: nothing sent
    assert len(transport.tuples) == 2


def test_an_emit_reaches_every_subscription_of_its_stream_and_checks_its_values() -> None:
    builder = TopologyBuilder("subscriptions")
    builder.set_spout("source", ListSpout([(1,)], ["n"]))
    builder.set_bolt("two", TwoStreams()).shuffle_grouping("source")
    builder.set_bolt("all", Sink(), 2).all_grouping("two")
    builder.set_bolt("one", Sink()).global_grouping("two")
    topology = builder.build()
    layout = topology.task_layout()
    task = layout["two"][0]
    transport = Recorder()
    collector = BoltOutputCollector(topology, "two", task, transport, {task}, TaskStats("two", task))
    collector.current = Tuple(("in",), Origin("source", layout["source"][0], "default", ("n",)), (77, 5))
    emit = collector.anchored_emitter()
    emit(("w",))
    emit(("l", "r"), "pairs")  # no subscriber: goes nowhere
    with pytest.raises(ValueError, match="emitted 2 values on stream 'default', which declares 1 field"):
        emit(("w", "x"))
    with pytest.raises(ValueError, match="undeclared stream 'other'"):
        emit(("w",), "other")
    asyncio.run(collector.flush())
    assert sorted(t for t, _, _, _ in transport.tuples) == sorted(layout["all"] + layout["one"][:1])
    edges = [edge for _, _, _, anchors in transport.tuples for _, edge in anchors]
    assert len(set(edges)) == 3 and functools.reduce(operator.xor, edges) == collector.current.ack_val
    assert collector.stats.emitted == 2


def test_acks_and_fails_reach_the_acker_of_each_root() -> None:
    builder = TopologyBuilder("split-acks")
    builder.set_spout("source", ListSpout([(1,)], ["n"]))
    builder.set_bolt("sink", Sink()).shuffle_grouping("source")
    topology = builder.build({"topology.acker.executors": 3})
    layout = topology.task_layout()
    task, ackers = layout["sink"][0], layout["__acker"]
    origin = Origin("source", layout["source"][0], "default", ("n",))
    transport = Recorder()
    collector = BoltOutputCollector(topology, "sink", task, transport, {task}, TaskStats("sink", task))
    for root in range(30):
        collector.ack(Tuple((root,), origin, (root, 1000 + root)))
    collector.fail(Tuple((0,), origin, (31, 5, 33, 6)))
    collector._flush_control()
    acks = {acker: payload for acker, kind, payload in transport.control if kind == ACK_ACK}
    assert acks == {ackers[i]: {root: 1000 + root for root in range(i, 30, 3)} for i in range(3)}
    fails = {acker: payload for acker, kind, payload in transport.control if kind == ACK_FAIL}
    assert fails == {ackers[31 % 3]: [31], ackers[33 % 3]: [33]}

    transport.control.clear()  # roots of one acker: the batch goes whole
    for root in range(0, 30, 3):
        collector.ack(Tuple((root,), origin, (root, 7)))
    collector._flush_control()
    assert transport.control == [(ackers[0], ACK_ACK, {root: 7 for root in range(0, 30, 3)})]


SINK_ORIGIN = Origin("source", 2, "default", ("n",))


def sink_collector(transport: Recorder) -> BoltOutputCollector:
    """The collector of the one sink task of source -> sink, whose source task is 2."""
    builder = TopologyBuilder("acks")
    builder.set_spout("source", ListSpout([(1,)], ["n"]))
    builder.set_bolt("sink", Sink()).shuffle_grouping("source")
    topology = builder.build()
    layout = topology.task_layout()
    assert layout["source"] == (SINK_ORIGIN.source_task,)
    task = layout["sink"][0]
    return BoltOutputCollector(topology, "sink", task, transport, {task}, TaskStats("sink", task))


def acked_batch(base: int) -> list[Tuple]:
    """11 tuples to ack: 3 in each of the trees 0, 1 and 2 (edges from ``base``), one in
    the trees 1 and 5, one unanchored; each with edges anchored to it (``ack_val``)."""
    tuples = [Tuple((i,), SINK_ORIGIN, (i % 3, base + i)) for i in range(9)]
    tuples.append(Tuple((9,), SINK_ORIGIN, (1, 7, 5, 8)))
    tuples.append(Tuple((10,), SINK_ORIGIN, None))
    for i, tup in enumerate(tuples):
        tup.ack_val = 10 * base * i
    return tuples


def test_ack_all_acks_as_one_ack_per_tuple_does() -> None:
    one_by_one, at_once = Recorder(), Recorder()
    first, second = sink_collector(one_by_one), sink_collector(at_once)
    for tup in acked_batch(100):
        first.ack(tup)
    second.ack_all(acked_batch(100))
    first._flush_control()
    second._flush_control()
    assert at_once.control == one_by_one.control and len(at_once.control) == 1
    assert second.stats.acked == first.stats.acked == 11


class Counter(StatefulBolt):
    outputs = ["word", "count"]

    def init_state(self, state: KeyValueState) -> None:
        pass


def test_a_checkpointed_topology_tracks_roots_only_and_sends_nothing_to_the_ackers() -> None:
    """Its trees complete at commit: a spout tuple carries its root with edge 0 to every
    target, a bolt's emits share their input's roots, an ack is only counted, and a fail
    names its roots to the checkpoint party instead of an acker."""
    builder = TopologyBuilder("checkpointed")
    builder.set_spout("source", ListSpout([(1,)], ["word"]))
    builder.set_bolt("count", Counter(), 2).all_grouping("source")
    builder.set_bolt("sink", Sink()).shuffle_grouping("count")
    topology = builder.build({"topology.acker.executors": 2})
    layout = topology.task_layout()
    spout_task, (count_task, _) = layout["source"][0], layout["count"]
    transport = Recorder()
    spout = SpoutOutputCollector(topology, "source", spout_task, transport, {spout_task},
                                 TaskStats("source", spout_task), pending=PendingTrees())
    spout.emit(("a",), msg_id="m")
    asyncio.run(spout.flush())
    assert spout.edges is False and spout.acked_at_once == []
    [(root, msg_id)] = spout.pending.take_all()
    assert msg_id == "m"
    assert [anchors for _, _, _, anchors in transport.tuples] == [[(root, 0)], [(root, 0)]]

    bolt = BoltOutputCollector(topology, "count", count_task, transport, {count_task},
                               TaskStats("count", count_task))
    bolt.failed_roots = []
    inputs = [Tuple(("a",), Origin("source", spout_task, "default", ("word",)), anchors)
              for anchors in ((root, 0), (root, 0, 99, 0))]
    bolt.current = inputs[0]
    bolt.anchored_emitter()(("a", 1))
    bolt.anchored_many_emitter()([("a", 2), ("a", 3)])
    bolt.current = None
    bolt.emit(("a", 4), anchors=inputs)
    transport.tuples.clear()
    asyncio.run(bolt.flush())
    sent = [anchors for _, _, _, batch in transport.tuples for anchors in batch]
    assert sent == [(root, 0)] * 3 + [(root, 0, 99, 0)]
    assert sent[0] is inputs[0].anchors  # shared, not copied
    bolt.ack_all(inputs)
    bolt.fail(inputs[1])
    bolt.flush_acks()
    assert bolt.stats.acked == 2 and bolt.stats.failed == 1 and bolt.failed_roots == [root, 99]
    assert transport.control == []
