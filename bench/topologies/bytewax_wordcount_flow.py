"""The Kafka word count as a Bytewax 0.21 dataflow, for ``bench/bytewax_wordcount.py``.

    python -m bytewax.run "bench/topologies/bytewax_wordcount_flow.py:build('HOST:PORT')"
    python -m bytewax.run "...:build('HOST:PORT')" -i 0 -a "127.0.0.1:P0;127.0.0.1:P1"  (and -i 1)

It runs in a virtual environment of its own (Bytewax and confluent-kafka, orjson), never
in streamflow's: it imports nothing from streamflow. The workload is
``topologies/wordcount.py``'s with Kafka in and out: read the JSON sentences
``{"id": ..., "text": ...}`` of ``input_topic`` from the beginning with Bytewax's
``KafkaSource`` (``tail=False``: the dataflow ends when every partition is read to its end
offset), lower-case and split each text into words with the same pattern, keep a running
count per word (``stateful_map`` on the word as key, so on several workers each word is
counted by one of them), and write every running count to ``output_topic`` as JSON
``{"word": ..., "count": ...}``, keyed by the word, with Bytewax's ``KafkaSink``: the
highest count written for a word is its final count.

The sink's producer gets streamflow's sink settings (acks=all, linger 20 ms); Bytewax's
sink flushes the producer after every batch it writes, so the linger only matters within a
batch. Nothing is recovered or committed: a run counts exactly once only if nothing fails,
which the bench checks.
"""

from __future__ import annotations

import re

import orjson
from bytewax import operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow

WORD = re.compile(r"[\w']+")
"""What topologies/wordcount.py counts as a word."""


def words(message: KafkaSourceMessage[bytes | None, bytes | None]) -> list[str]:
    """The words of one sentence record, lower-cased."""
    return WORD.findall(orjson.loads(message.value or b"")["text"].lower())


def count(running: int | None, _word: str) -> tuple[int, int]:
    """One more of a word: its new running count, kept and emitted."""
    total = (running or 0) + 1
    return total, total


def record(item: tuple[str, int]) -> KafkaSinkMessage[bytes, bytes]:
    """The output record of a word's running count."""
    word, total = item
    return KafkaSinkMessage(word.encode(), orjson.dumps({"word": word, "count": total}))


def build(bootstrap: str, input_topic: str = "sentences", output_topic: str = "counts") -> Dataflow:
    """The dataflow against the broker at ``bootstrap`` (``HOST:PORT``)."""
    flow = Dataflow("wordcount")
    sentences = op.input("sentences", flow, KafkaSource([bootstrap], [input_topic], tail=False))
    split = op.flat_map("split", sentences, words)
    counts = op.stateful_map("count", op.key_on("word", split, lambda word: word), count)
    sink = KafkaSink([bootstrap], output_topic, add_config={"acks": "all", "linger.ms": "20"})
    op.output("sink", op.map("record", counts, record), sink)
    return flow
