"""A streamparse topology that uses what the quickstart does not: a reliable spout, named
streams, a direct stream, a tick tuple per component config, and (config.json) msgpack."""

from features import Router, Sentences, Tally
from streamparse import Grouping, Topology


class Features(Topology):
    sentences = Sentences.spec()
    router = Router.spec(inputs={sentences: Grouping.SHUFFLE}, par=2)
    tally = Tally.spec(
        inputs={router["words"]: Grouping.fields("word"), router["direct"]: Grouping.DIRECT},
        par=2,
        config={"topology.tick.tuple.freq.secs": 1},
    )
