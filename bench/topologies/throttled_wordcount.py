"""Word count fed at a fixed rate, for complete-latency figures below saturation.

    streamflow local bench/topologies/throttled_wordcount.py -c input.path=IN -c rate=R
        [-c output.path=OUT] [-c rate.burst.secs=0.02]

The spout is ``LineSpout`` (one sentence per line of IN, acked, replayed on failure)
behind a token bucket: the spout tasks emit at most ``rate`` sentences/s in all (each task
``rate / parallelism``), in bursts of at most ``rate.burst.secs`` seconds' worth of tokens
(at least one). The bolts are ``topologies/wordcount.py``'s own (``SplitSentence``,
``CountWords``, and ``TopWords`` when no ``output.path`` is given), wired as there.

``wordcount.py`` is imported from beside this file when it is there, as in a code package
that ``bench/cluster_wordcount.py`` submits (this file and ``topologies/wordcount.py`` in
one directory: a cluster's workers only get the directory of the submitted file), else from
the repository's ``topologies/`` (local mode from a checkout).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Mapping

from streamflow_connectors.files import JsonLinesSink, LineSpout

from streamflow import TaskContext, Topology, TopologyBuilder

try:
    from wordcount import CountWords, SplitSentence, TopWords
except ImportError:  # run in place from a checkout: the example topologies' directory
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "topologies"))
    from wordcount import CountWords, SplitSentence, TopWords


class ThrottledLineSpout(LineSpout):
    """``LineSpout`` that emits (and replays) at most ``rate`` lines/s over all its tasks."""

    def __init__(self, path: str, rate: float, field: str = "line", burst_secs: float = 0.02) -> None:
        super().__init__(path, field=field)
        if rate <= 0:
            raise ValueError(f"rate must be > 0 sentences/s, got {rate!r}")
        self.rate = float(rate)
        self.burst_secs = float(burst_secs)

    def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        super().open(config, context)
        self._per_task = self.rate / context.parallelism
        self._capacity = max(1.0, self._per_task * self.burst_secs)
        self._tokens = 0.0
        self._last = time.monotonic()

    def next_tuple(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._per_task)
        self._last = now
        if self._tokens < 1.0:
            return  # nothing emitted: the executor pauses (<= 5 ms) and calls again
        self._tokens -= 1.0
        super().next_tuple()


def build(config: Mapping[str, Any]) -> Topology:
    def parallelism(name: str, default: int) -> int:
        return config.get(f"{name}.parallelism", default)  # type: ignore[no-any-return]

    source = config.get("input.path")
    if not source:
        raise ValueError("give the input with -c input.path=FILE (one sentence per line)")
    rate = config.get("rate")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate <= 0:
        raise ValueError(f"give the rate with -c rate=SENTENCES_PER_SECOND (> 0), got {rate!r}")
    burst = config.get("rate.burst.secs", 0.02)

    builder = TopologyBuilder("throttled-wordcount")
    spout = ThrottledLineSpout(str(source), rate, field="sentence", burst_secs=burst)
    builder.set_spout("sentences", spout, parallelism("spout", 1))
    builder.set_bolt("split", SplitSentence(), parallelism("split", 2)).shuffle_grouping("sentences")
    builder.set_bolt("count", CountWords(), parallelism("count", 2)).fields_grouping("split", ["word"])
    output = config.get("output.path")
    if output:
        sink = JsonLinesSink(str(output), fields=["word", "count"])
        # A count may be written by any sink task: keep it in its worker, off the network.
        builder.set_bolt("sink", sink, parallelism("sink", 2)).local_or_shuffle_grouping("count")
    else:
        builder.set_bolt("top", TopWords(10)).global_grouping("count")
    return builder.build()
