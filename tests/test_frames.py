"""Frames between workers (streamflow.transport.codec): whatever a task sends comes out of
the peer's decoder the same, with the data serializer (msgpack, the default) and with
pickle; values that are not data fail to encode in the sender, and no frame, however
malformed, makes the decoder raise anything but FrameError."""

from __future__ import annotations

import base64
import datetime
import threading
from collections import namedtuple
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamflow import BasicBolt, TopologyBuilder, Tuple
from streamflow.errors import ConfigError
from streamflow.inbox import ACK_ACK, ACK_FAIL, ACK_INIT, CHECKPOINT, TUPLES
from streamflow.testing import Ledger, ListSpout
from streamflow.transport.base import UnencodableValue
from streamflow.transport.codec import Codec, FrameError
from streamflow.tuples import Origin

TOP = 2**64 - 1
Point = namedtuple("Point", "x y")


class Money:
    """A user type that turns itself into data (the ``"module:Class"`` form)."""

    def __init__(self, cents: int, currency: str) -> None:
        self.cents, self.currency = cents, currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.cents, self.currency) == (other.cents, other.currency)

    def to_data(self) -> list[Any]:
        return [self.cents, self.currency]

    @classmethod
    def from_data(cls, data: list[Any]) -> Money:
        return cls(*data)


class DecimalSerializer:
    """A serializer of a type the user does not own (the ``{"module:Class": ...}`` form)."""

    def to_data(self, value: Decimal) -> str:
        return str(value)

    def from_data(self, data: str) -> Decimal:
        return Decimal(data)


class TwoStreams(BasicBolt):
    outputs = {"default": ["word"], "pairs": ["left", "right"]}

    def process(self, tup: Tuple) -> None:
        pass


def codecs(**config: Any) -> tuple[Codec, Codec, Any]:
    """A sender's and a receiver's codec of one topology, and origins of a split task's streams."""
    builder = TopologyBuilder("frames")
    builder.set_spout("source", ListSpout([("a",)], ["line"], Ledger()))
    builder.set_bolt("split", TwoStreams(), 2).shuffle_grouping("source")
    topology = builder.build(config)
    sender, receiver = Codec(topology), Codec(topology)
    task = topology.task_layout()["split"][0]
    outputs = topology.components["split"].outputs
    return sender, receiver, {s: Origin("split", task, s, outputs[s]) for s in ("default", "pairs")}


def round_trip(sender: Codec, receiver: Codec, messages: list[Any]) -> list[Any]:
    """Encode ``messages`` (TUPLES payloads as lists of tuples of one origin) into one
    frame and decode it."""
    parts = []
    for task, kind, payload in messages:
        if kind == TUPLES:
            origin = payload[0].origin
            parts.append(sender.encode_tuples(task, origin.source_task, origin.stream,
                                              [t.values for t in payload], [t.anchors for t in payload]))
        else:
            parts.append(sender.encode_control(task, kind, payload))
    return decode(receiver, sender.frame(parts))


def decode(receiver: Codec, frame: bytes) -> list[Any]:
    """The messages of ``frame``, TUPLES payloads (batches) as their tuples."""
    return [(task, kind, payload.tuples() if kind == TUPLES else payload)
            for task, kind, payload in receiver.decode(frame)]


def as_rows(tuples: list[Tuple]) -> list[tuple[Any, ...]]:
    return [(t.values, t.source, t.source_task, t.stream, t.fields, t.anchors, t.ack_val) for t in tuples]


def types_of(value: Any) -> Any:
    """``value``'s shape with the type of every node: a tuple and a list that compare equal
    do not have the same types."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value), [types_of(v) for v in value]
    if isinstance(value, dict):
        return dict, [(types_of(k), types_of(v)) for k, v in value.items()]
    return type(value)


def test_anchored_tuples_and_acker_traffic_come_back_whole() -> None:
    sender, receiver, origins = codecs()
    sent = [Tuple((f"w{i}",), origins["default"], (TOP - i, i)) for i in range(100)]
    acks = {TOP: 1, 2**63: TOP, 5: 0}
    inits = [(TOP, 7, 3), (1, 2, 3)]
    received = round_trip(sender, receiver, [(9, TUPLES, sent), (4, ACK_ACK, acks), (4, ACK_INIT, inits),
                                             (4, ACK_FAIL, [TOP, 1])])
    (task, what, tuples), ack_message, (_, _, got_inits), (_, _, got_fails) = received
    assert (task, what) == (9, TUPLES)
    assert as_rows(tuples) == as_rows(sent)
    assert all(type(t.anchors) is tuple and type(t.values) is tuple for t in tuples)
    assert tuples[0].origin is not origins["default"]  # the receiver's own Origin
    assert ack_message == (4, ACK_ACK, acks)
    assert list(got_inits) == inits and list(got_fails) == [TOP, 1]


@pytest.mark.parametrize("anchors", [
    [None, (1, 2), None],  # unanchored tuples among anchored ones
    [(1, 2, 3, 4), (5, 6), (7, 8)],  # a tuple anchored in two trees
    [(2**64 + 5, 1), (1, 2), (3, 4)],  # an id past 64 bits (a root placed on a local acker)
])
def test_anchors_of_every_shape_come_back_as_they_were(anchors: list[Any]) -> None:
    sender, receiver, origins = codecs()
    sent = [Tuple((i,), origins["default"], a) for i, a in enumerate(anchors)]
    [(_, _, tuples)] = round_trip(sender, receiver, [(9, TUPLES, sent)])
    assert as_rows(tuples) == as_rows(sent)


@pytest.mark.parametrize("values", [
    [["a"], ["b"]],  # rows emitted as lists stay lists
    [("a",), ["b"]],  # mixed containers
    [((1, [2, (3,)]),), ({"k": (1, 2), (3, 4): [5]},)],  # nested tuples, lists, tuple keys
    [({1, 2},), (frozenset({3}),), (2**100,), (-(2**70),), (b"\x00\xff",), (None,), (True,), (1.5,)],
])
def test_data_keeps_its_exact_types(values: list[Any]) -> None:
    sender, receiver, origins = codecs()
    sent = [Tuple(v, origins["default"], (i + 1, i + 2)) for i, v in enumerate(values)]
    [(_, _, tuples)] = round_trip(sender, receiver, [(9, TUPLES, sent)])
    assert [t.values for t in tuples] == values
    assert [types_of(t.values) for t in tuples] == [types_of(v) for v in values]


def test_a_checkpoint_message_keeps_its_tuples_and_lists() -> None:
    sender, receiver, _ = codecs()
    payload = ("rollback", 1, 2, 3, ((1, 2), {"topic-0": [5, 6]}, [7]))
    [(_, _, got)] = round_trip(sender, receiver, [(4, CHECKPOINT, payload)])
    assert got == payload and types_of(got) == types_of(payload)


def test_batches_of_two_streams_in_one_frame_come_back_each_with_its_origin() -> None:
    sender, receiver, origins = codecs()
    words, pairs = origins["default"], origins["pairs"]
    sent_words = [Tuple(("a",), words, (1, 2)), Tuple(("d",), words, (3, 4))]
    sent_pairs = [Tuple(("b", "c"), pairs, None), Tuple(("e", {"f": [1.5, None, True]}), pairs, (5, 6))]
    [(_, _, got_words), (_, _, got_pairs)] = round_trip(
        sender, receiver, [(9, TUPLES, sent_words), (9, TUPLES, sent_pairs)])
    assert as_rows(got_words) == as_rows(sent_words)
    assert as_rows(got_pairs) == as_rows(sent_pairs)
    assert [t["left"] for t in got_pairs] == ["b", "e"]


def test_pickle_carries_values_of_any_type_when_the_topology_opts_in() -> None:
    sender, receiver, origins = codecs(**{"topology.serializer": "pickle"})
    values = [(Point(1, 2),), (Decimal("1.10"),), (datetime.date(2026, 11, 29),), ("plain",)]
    sent = [Tuple(v, origins["default"], (i + 1, i + 2)) for i, v in enumerate(values)]
    [(_, _, tuples)] = round_trip(sender, receiver, [(9, TUPLES, sent)])
    assert [t.values for t in tuples] == values
    assert [type(t.values[0]) for t in tuples] == [Point, Decimal, datetime.date, str]


def test_the_data_serializer_refuses_what_a_pickle_sender_sends() -> None:
    pickler, _, origins = codecs(**{"topology.serializer": "pickle"})
    _, receiver, _ = codecs()
    part = pickler.encode_tuples(9, origins["default"].source_task, "default", [(Point(1, 2),)], [None])
    with pytest.raises(FrameError, match="refused: topology.serializer is msgpack"):
        receiver.decode(pickler.frame([part]))


def test_registered_types_travel_in_both_forms_of_the_register() -> None:
    register = [f"{__name__}:Money", {"decimal:Decimal": f"{__name__}:DecimalSerializer"}]
    sender, receiver, origins = codecs(**{"topology.serializer.register": register})
    values = [(Money(150, "EUR"),), ((Decimal("2.50"), [Money(1, "USD")]),)]
    sent = [Tuple(v, origins["default"], None) for v in values]
    [(_, _, tuples)] = round_trip(sender, receiver, [(9, TUPLES, sent)])
    assert [t.values for t in tuples] == values
    assert type(tuples[1].values[0][0]) is Decimal


@pytest.mark.parametrize("register, message", [
    (["no_such_module:Thing"], "cannot import no_such_module:Thing"),
    ([f"{__name__}:Point"], "has no to_data()"),
    ([f"{__name__}:TOP"], "is not a class"),
    ([f"{__name__}:Money", f"{__name__}:Money"], "Money registered twice"),
])
def test_a_bad_register_is_refused_in_one_line(register: list[Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        codecs(**{"topology.serializer.register": register})


@pytest.mark.parametrize("serializer, value, type_name", [
    ("msgpack", threading.Lock(), "_thread.lock"),
    ("msgpack", Point(1, 2), "test_frames.Point"),  # a subclass of tuple is not a tuple
    ("msgpack", Decimal("1"), "decimal.Decimal"),
    ("pickle", threading.Lock(), "_thread.lock"),
])
def test_a_value_that_cannot_be_encoded_names_its_type_and_the_other_rows_still_go(
        serializer: str, value: Any, type_name: str) -> None:
    sender, receiver, origins = codecs(**{"topology.serializer": serializer})
    source = origins["default"].source_task
    with pytest.raises(UnencodableValue, match=type_name) as refused:
        sender.encode_tuples(9, source, "default", [("a",), (value,), ("c",)], [(1, 2), (3, 4), None])
    assert refused.value.rows == [1]
    assert refused.value.part is not None
    [(_, _, tuples)] = decode(receiver, sender.frame([refused.value.part]))
    assert [(t.values, t.anchors) for t in tuples] == [(("a",), (1, 2)), (("c",), None)]


def test_a_batch_with_no_encodable_row_leaves_nothing_to_send() -> None:
    sender, _, origins = codecs()
    with pytest.raises(UnencodableValue) as refused:
        sender.encode_tuples(9, origins["default"].source_task, "default", [(threading.Lock(),)], [None])
    assert refused.value.rows == [0] and refused.value.part is None


@pytest.mark.parametrize("payload, message", [
    (b"\xc1", "undecodable frame"),  # a byte msgpack never uses
    (b"\x91\x93\x01\xa6tuples\x95\x63\xa7default\x00\x90\x90", "no known origin"),  # task 99
    (b"\x91\x93\xa1x\xa7ack_ack\x80", "for task 'x'"),
    (b"\x91\x93\x01\xa7ack_ack\x90", "payload is a tuple"),
    (b"\x05", "not a list of messages"),
    (b"\x91\x93\x01\xa4bomb\xc0", "unknown kind 'bomb'"),
])
def test_a_malformed_frame_raises_frame_error(payload: bytes, message: str) -> None:
    _, receiver, _ = codecs()
    with pytest.raises(FrameError, match=message):
        receiver.decode(payload)


# --------------------------------------------------------------------------- properties

DATA = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: (st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
                   | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=4)),
    max_leaves=12,
)
ANCHORS = st.none() | st.lists(st.integers(0, 2**66), min_size=2, max_size=4).map(tuple)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(DATA) | st.lists(DATA, min_size=1, max_size=1), min_size=1, max_size=5),
       anchors=st.data())
def test_data_round_trips_exactly(rows: list[Any], anchors: st.DataObject) -> None:
    sender, receiver, origins = codecs()
    anchor_column = [anchors.draw(ANCHORS) for _ in rows]
    part = sender.encode_tuples(9, origins["default"].source_task, "default", rows, anchor_column)
    [(_, _, tuples)] = decode(receiver, sender.frame([part]))
    assert [t.values for t in tuples] == rows
    assert [types_of(t.values) for t in tuples] == [types_of(r) for r in rows]
    assert [t.anchors for t in tuples] == anchor_column


def valid_frame() -> bytes:
    sender, _, origins = codecs()
    source = origins["default"].source_task
    return sender.frame([
        sender.encode_tuples(9, source, "default", [("a",), (("b", [1]),)], [(1, 2), None]),
        sender.encode_control(4, ACK_ACK, {1: 2}),
        sender.encode_control(4, CHECKPOINT, ("prepare", 1, 2, 3, None)),
    ])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200) | st.builds(
    lambda frame, cut, flips: bytes(b ^ flips.get(i, 0) for i, b in enumerate(frame[:cut])),
    st.just(valid_frame()), st.integers(0, 200), st.dictionaries(st.integers(0, 120), st.integers(1, 255))))
def test_random_truncated_and_garbled_frames_raise_only_frame_error(payload: bytes) -> None:
    _, receiver, _ = codecs()
    try:
        receiver.decode(payload)
    except FrameError:
        pass


@pytest.mark.parametrize("frame", [
    # Found by atheris (tests/fuzz/fuzz_frames.py): a LISTS_OF_SCALARS batch whose rows hold an int.
    base64.b64decode("kZMEpnR1cGxlc5UCp2RlZmF1bHQBkpKheMcJAkAAAAAAAAAAAACSgIA="),
    # ... and a message whose kind is a map.
    base64.b64decode("kZMDg3R1cGxlc5UBp2RlZmF1bHQAkpKhYQGSoWICkoELDIENDg=="),
])
def test_frames_the_fuzzer_found_raise_frame_error(frame: bytes) -> None:
    with pytest.raises(FrameError):
        codecs()[1].decode(frame)
