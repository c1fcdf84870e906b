"""Frames between workers: whatever a task sends comes out of the peer's decoder the same,
in marshal frames (built-in values) and in pickle frames (any other)."""

from __future__ import annotations

import datetime
import struct
from collections import namedtuple
from decimal import Decimal
from typing import Any

import pytest

from streamflow import BasicBolt, TopologyBuilder, Tuple
from streamflow.inbox import ACK_ACK, ACK_INIT, TUPLES
from streamflow.testing import Ledger, ListSpout
from streamflow.transport.frames import Codec
from streamflow.tuples import Origin

TOP = 2**64 - 1
Point = namedtuple("Point", "x y")


class TwoStreams(BasicBolt):
    outputs = {"default": ["word"], "pairs": ["left", "right"]}

    def process(self, tup: Tuple) -> None:
        pass


def codecs() -> tuple[Codec, Codec, Any]:
    """A sender's and a receiver's codec of one topology, and origins of a split task's streams."""
    builder = TopologyBuilder("frames")
    builder.set_spout("source", ListSpout([("a",)], ["line"], Ledger()))
    builder.set_bolt("split", TwoStreams(), 2).shuffle_grouping("source")
    topology = builder.build()
    sender, receiver = Codec(topology), Codec(topology)
    task = topology.task_layout()["split"][0]
    outputs = topology.components["split"].outputs
    return sender, receiver, {s: Origin("split", task, s, outputs[s]) for s in ("default", "pairs")}


def columns(tuples: list[Tuple]) -> tuple[int, str, list[Any], list[Any]]:
    """A batch of one origin as a collector sends it: source task, stream, values, anchors."""
    origin = tuples[0].origin
    assert all(t.origin is origin for t in tuples)
    return origin.source_task, origin.stream, [t.values for t in tuples], [t.anchors for t in tuples]


def round_trip(sender: Codec, receiver: Codec, messages: list[Any]) -> tuple[bytes, list[Any]]:
    """Encode and decode ``messages``, whose TUPLES payloads are lists of tuples."""
    frame = sender.encode([(task, kind, columns(p) if kind == TUPLES else p) for task, kind, p in messages])
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    decoded = receiver.decode(frame[4:])
    return frame[4:5], [(task, kind, receiver.tuples(p) if kind == TUPLES else p) for task, kind, p in decoded]


def as_rows(tuples: list[Tuple]) -> list[tuple[Any, ...]]:
    return [(t.values, t.source, t.source_task, t.stream, t.fields, t.anchors, t.ack_val) for t in tuples]


def test_anchored_builtin_tuples_travel_as_marshal_and_come_back_whole() -> None:
    sender, receiver, origins = codecs()
    sent = [Tuple((f"w{i}",), origins["default"], (TOP - i, i)) for i in range(100)]
    acks = {TOP: 1, 2**63: TOP, 5: 0}
    inits = [(TOP, 7, 3), (1, 2, 3)]
    kind, received = round_trip(sender, receiver,
                                [(9, TUPLES, sent), (4, ACK_ACK, acks), (4, ACK_INIT, inits)])
    assert kind == b"M"
    (task, what, tuples), ack_message, init_message = received
    assert (task, what) == (9, TUPLES)
    assert as_rows(tuples) == as_rows(sent)
    assert all(type(t.anchors) is tuple for t in tuples)
    assert tuples[0].origin is not origins["default"]  # the receiver's own Origin
    assert ack_message == (4, ACK_ACK, acks)
    assert init_message == (4, ACK_INIT, inits)


@pytest.mark.parametrize("anchors", [
    [None, (1, 2), None],  # unanchored tuples among anchored ones
    [(1, 2, 3, 4), (5, 6), (7, 8)],  # a tuple anchored in two trees
    [(2**64 + 5, 1), (1, 2), (3, 4)],  # an id past 64 bits (a root placed on a local acker)
])
def test_anchors_of_every_shape_come_back_as_they_were(anchors: list[Any]) -> None:
    sender, receiver, origins = codecs()
    sent = [Tuple((i,), origins["default"], a) for i, a in enumerate(anchors)]
    _, [(_, _, tuples)] = round_trip(sender, receiver, [(9, TUPLES, sent)])
    assert as_rows(tuples) == as_rows(sent)


def test_values_of_other_types_make_the_frame_pickle_and_keep_their_types() -> None:
    sender, receiver, origins = codecs()
    values = [(Point(1, 2),), (Decimal("1.10"),), (datetime.date(2026, 11, 29),), ("plain",)]
    sent = [Tuple(v, origins["default"], (i + 1, i + 2)) for i, v in enumerate(values)]
    kind, [(_, _, tuples)] = round_trip(sender, receiver, [(9, TUPLES, sent)])
    assert kind == b"P"
    assert [t.values for t in tuples] == values
    assert [type(t.values[0]) for t in tuples] == [Point, Decimal, datetime.date, str]


def test_batches_of_two_streams_in_one_frame_come_back_each_with_its_origin() -> None:
    sender, receiver, origins = codecs()
    words, pairs = origins["default"], origins["pairs"]
    sent_words = [Tuple(("a",), words, (1, 2)), Tuple(("d",), words, (3, 4))]
    sent_pairs = [Tuple(("b", "c"), pairs, None), Tuple(("e", {"f": [1.5, None, True]}), pairs, (5, 6))]
    _, [(_, _, got_words), (_, _, got_pairs)] = round_trip(
        sender, receiver, [(9, TUPLES, sent_words), (9, TUPLES, sent_pairs)])
    assert as_rows(got_words) == as_rows(sent_words)
    assert as_rows(got_pairs) == as_rows(sent_pairs)
    assert [t["left"] for t in got_pairs] == ["b", "e"]


def test_a_frame_of_unknown_format_is_refused() -> None:
    sender, _, _ = codecs()
    with pytest.raises(ConnectionError, match="unknown format"):
        sender.decode(b"Z" + sender.encode([(1, ACK_ACK, {1: 2})])[5:])
