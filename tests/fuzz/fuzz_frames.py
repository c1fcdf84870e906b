"""Fuzz the worker link's frame decoder with atheris (coverage-guided, libFuzzer).

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/fuzz_frames.py -max_total_time=600

What an authenticated peer sends is decoded by :meth:`Codec.decode`; the contract is that
any bytes either decode to messages or raise :class:`FrameError` (the receiver then drops
the connection). Any other exception, a hang or a crash is a finding. The corpus starts
from well-formed frames of every kind, so mutations reach deep into the decoder.
Not collected by pytest: tests/test_frames.py holds the hypothesis properties.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from streamflow import Spout, TopologyBuilder
    from streamflow.components import BasicBolt
    from streamflow.transport.codec import Codec, FrameError


class _Source(Spout):
    outputs = ["word", "count"]


class _Sink(BasicBolt):
    outputs = ["word"]


def _codec() -> Codec:
    builder = TopologyBuilder("fuzz")
    builder.set_spout("source", _Source(), 2)
    builder.set_bolt("sink", _Sink(), 2).shuffle_grouping("source")
    return Codec(builder.build({"topology.workers": 2}))


CODEC = _codec()


def test_one_input(data: bytes) -> None:
    try:
        CODEC.decode(data)
    except FrameError:
        pass


def seed_corpus(directory: Path) -> None:
    """Well-formed frames of every kind, for the fuzzer to mutate."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = [
        [CODEC.encode_tuples(3, 1, "default", [("a", 1), ("b", 2)], [{11: 12}, {13: 14}])],
        [CODEC.encode_tuples(4, 2, "default", [["x", 2**70], ["y", -1.5]], [{}, {}])],
        [CODEC.encode_tuples(3, 1, "default", [("a", {"nested": (1, {2})})], [{1: 2}])],
        [CODEC.encode_control(5, "ack_init", [(1, 2, 3)])],
        [CODEC.encode_control(5, "ack_ack", {1: 2, 3: 4})],
        [CODEC.encode_control(5, "tree_done", [1, 2])],
        [CODEC.encode_control(6, "barrier", (1, "checkpoint", 2, 3))],
    ]
    for n, parts in enumerate(seeds):
        (directory / f"seed-{n}").write_bytes(CODEC.frame(parts))


if __name__ == "__main__":
    corpus = Path(__file__).resolve().parents[2] / "build" / "fuzz" / "frames"
    seed_corpus(corpus)
    atheris.Setup([*sys.argv, str(corpus)], test_one_input)
    atheris.Fuzz()
