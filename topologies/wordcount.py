"""Word count: sentences -> split (shuffle) -> count (fields grouping on word) -> sink.

    streamflow local topologies/wordcount.py
        counts the sample text beside this file and prints the ten most frequent words;
    streamflow local topologies/wordcount.py -c input.path=IN -c output.path=OUT
        reads IN, one sentence per line, and appends to OUT one JSON line
        {"word": ..., "count": ...} per counted word, with running counts: the highest
        count written for a word is its final count.

Other options: ``-c spout.parallelism=N``, ``-c split.parallelism=N``,
``-c count.parallelism=N``, ``-c sink.parallelism=N``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Mapping

from streamflow_connectors.files import JsonLinesSink, LineSpout

from streamflow import BasicBolt, TaskContext, Topology, TopologyBuilder, Tuple

SAMPLE = Path(__file__).with_name("sample.txt")
WORD = re.compile(r"[\w']+")


class SplitSentence(BasicBolt):
    """Lower-cases a sentence and emits each word (letters, digits, apostrophes)."""

    outputs = ["word"]

    def process(self, tup: Tuple) -> None:
        for word in WORD.findall(tup.values[0].lower()):
            self.emit((word,))


class CountWords(BasicBolt):
    """Keeps a running count per word; fields grouping sends each word to one task."""

    outputs = ["word", "count"]

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.counts: dict[str, int] = {}

    def process(self, tup: Tuple) -> None:
        word = tup.values[0]
        count = self.counts.get(word, 0) + 1
        self.counts[word] = count
        self.emit((word, count))


class TopWords(BasicBolt):
    """Keeps the highest count seen per word and prints the top ``n`` when it stops."""

    def __init__(self, n: int = 10) -> None:
        self.n = n

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.counts: dict[str, int] = {}

    def process(self, tup: Tuple) -> None:
        word, count = tup.values
        if count > self.counts.get(word, 0):
            self.counts[word] = count

    def cleanup(self) -> None:
        top = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))[: self.n]
        for word, count in top:
            print(f"{count:8d}  {word}", file=sys.stdout, flush=True)


def build(config: Mapping[str, Any]) -> Topology:
    def parallelism(name: str, default: int) -> int:
        return config.get(f"{name}.parallelism", default)  # type: ignore[no-any-return]

    builder = TopologyBuilder("wordcount")
    source = str(config.get("input.path") or SAMPLE)
    builder.set_spout("sentences", LineSpout(source, field="sentence"), parallelism("spout", 1))
    builder.set_bolt("split", SplitSentence(), parallelism("split", 2)).shuffle_grouping("sentences")
    builder.set_bolt("count", CountWords(), parallelism("count", 2)).fields_grouping("split", ["word"])
    output = config.get("output.path")
    if output:
        sink = JsonLinesSink(str(output), fields=["word", "count"])
        builder.set_bolt("sink", sink, parallelism("sink", 2)).shuffle_grouping("count")
    else:
        builder.set_bolt("top", TopWords(10)).global_grouping("count")
    return builder.build()
