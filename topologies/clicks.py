"""Clicks per user: clicks -> count (fields grouping on user; 60 s tumbling event-time
windows, 10 s of lag) -> sink, and the clicks no window takes -> late.

    streamflow local topologies/clicks.py
        counts the sample clicks beside this file and prints each user's count per window,
        then how many clicks went late;
    streamflow local topologies/clicks.py -c input.path=IN -c output.path=OUT [-c late.path=LATE]
        reads IN, one click {"user": ..., "url": ..., "ts": epoch ms} per line, and appends
        to OUT one JSON line {"user", "window_start", "window_end", "count"} (epoch ms) per
        user and window, and to LATE the lines no window takes, as they came in;
    streamflow local topologies/clicks.py -c kafka.bootstrap=HOST:PORT [-c kafka.stop_at_end=true]
        reads the topic ``clicks`` (the same JSON as values), writes the counts to
        ``click-counts`` (keyed by user) and the clicks no window takes to ``clicks-late``
        (each record's value unchanged, keyed by user); ``-c input.topic=``,
        ``-c output.topic=``, ``-c late.topic=``, ``-c deadletter.topic=`` change the
        topics, ``-c kafka.group_id=`` the group offsets are committed under.

A window [start, start + 60 s) fires once the watermark, the highest ts seen less 10 s,
passes its end, and when the input ends. A click that comes after its window fired is
late; it goes to the late output, as does a click whose ts is missing or not a number.
A record that is not a JSON object with a string ``user`` is no click: the Kafka spout
dead-letters it (to ``-c deadletter.topic=``, else counts it in ``kafka.dead_letters``);
a file has no dead letters, so such a line goes to the late output too.

A window's clicks are checkpointed state, so after a failure each window still fires
with exactly its clicks; a window that fired after the last checkpoint fires again after
the replay, so keep the last count written per (user, window_start). By default a
window keeps one count per user (an aggregate); ``-c clicks.aggregate=false`` keeps the
clicks themselves and counts them when the window fires (to compare their memory). The
state is in memory unless ``-c topology.state.provider=redis
-c topology.state.redis.url=redis://HOST:PORT/0``.

Other options: ``-c count.parallelism=N``, ``-c sink.parallelism=N``, and with Kafka
``-c spout.parallelism=N``. Lateness is judged per spout task, in the order it reads: a
task reading several partitions must get them within the lag of each other.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import orjson
from streamflow_connectors.files import JsonLinesSink, LineSpout
from streamflow_connectors.kafka import KafkaBolt, KafkaSpout

from streamflow import BasicBolt, Bolt, BoltBase, TaskContext, Topology, TopologyBuilder, Tuple
from streamflow.windows import Aggregate, Duration, Window, WindowedBolt

SAMPLE = Path(__file__).with_name("clicks-sample.jsonl")
CLICK_FIELDS = ["user", "ts", "click"]
"""A click as the window takes it: its user, its ts as given, and the click as it came in."""
COUNT_FIELDS = ["user", "window_start", "window_end", "count"]
LATE = "late"
"""The stream of the clicks no window takes."""


def click_values(raw: bytes | str) -> tuple[str, Any, str]:
    """(user, ts, click) of a click as it came in. The ts is left as given: the window
    sends a missing or malformed one late. Raises ValueError for what is no click."""
    click = orjson.loads(raw)
    if not isinstance(click, dict) or not isinstance(click.get("user"), str):
        raise ValueError("expected a JSON object with a string 'user'")
    return click["user"], click.get("ts"), raw if isinstance(raw, str) else raw.decode()


class ParseLine(BasicBolt):
    """A line of the input file as a click; a line that is no click goes late as it is."""

    outputs = {"default": CLICK_FIELDS, LATE: CLICK_FIELDS}

    def process(self, tup: Tuple) -> None:
        line = tup.values[0]
        try:
            self.emit(click_values(line))
        except ValueError:
            self.emit((None, None, line), LATE)


class ClickCount(Aggregate):
    """A window's count: one number per user and window, not the clicks."""

    def init(self) -> int:
        return 0

    def add(self, count: int, tup: Tuple) -> int:
        return count + 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result(self, count: int) -> int:
        return count


class CountClicks(WindowedBolt):
    """Each user's clicks in 60 s tumbling windows of their ts, 10 s out of order allowed."""

    outputs = {"default": COUNT_FIELDS, LATE: CLICK_FIELDS}

    def __init__(self, aggregate: bool = True) -> None:
        super().__init__(Duration(60), key_field="user", timestamp_field="ts", lag=10, late_stream=LATE,
                         aggregate=ClickCount() if aggregate else None)

    def execute(self, window: Window) -> None:
        count = window.result if self.aggregate is not None else len(window.tuples)
        self.emit((window.key, window.start, window.end, count))


class LineSink(Bolt):
    """Appends the ``click`` field of each tuple to a file, as it came in, one per line;
    acks each once its batch is written."""

    def __init__(self, path: str) -> None:
        self.path = path

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._batch: list[Tuple] = []

    def process(self, tup: Tuple) -> None:
        self._batch.append(tup)

    def end_batch(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            os.write(self._fd, "".join(f"{t['click']}\n" for t in batch).encode())
            self.ack_all(batch)

    def cleanup(self) -> None:
        os.close(self._fd)


class Report(BasicBolt):
    """Keeps the counts and the number of late clicks, and prints them when it stops."""

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.counts: dict[tuple[int, str], tuple[int, int]] = {}
        self.late = 0

    def process(self, tup: Tuple) -> None:
        if tup.stream == LATE:
            self.late += 1
        else:
            user, start, end, count = tup.values
            self.counts[start, user] = (end, count)

    def cleanup(self) -> None:
        def hms(ms: int) -> str:
            return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%H:%M:%S")

        for (start, user), (end, count) in sorted(self.counts.items()):
            print(f"{hms(start)}-{hms(end)} UTC  {user:<12} {count:6d}", file=sys.stdout, flush=True)
        print(f"late, or with no usable ts, or no click: {self.late}", file=sys.stdout, flush=True)


def _click_of(record: Any) -> tuple[str, Any, str]:
    """A Kafka record's click; what is no click raises, so the spout dead-letters it."""
    return click_values(record.value)


def build(config: Mapping[str, Any]) -> Topology:
    def parallelism(name: str, default: int) -> int:
        return config.get(f"{name}.parallelism", default)  # type: ignore[no-any-return]

    # Where clicks come from and where counts and late clicks go: the one place that chooses.
    builder = TopologyBuilder("clicks")
    sink: BoltBase | None = None
    late: BoltBase | None = None
    bootstrap = config.get("kafka.bootstrap")
    if bootstrap:
        spout = KafkaSpout(str(bootstrap), [str(config.get("input.topic", "clicks"))],
                           group_id=config.get("kafka.group_id"), value_format="bytes",
                           record_to_values=_click_of, fields=CLICK_FIELDS,
                           dead_letter_topic=config.get("deadletter.topic"))
        builder.set_spout("clicks", spout, parallelism("spout", 1))
        sink = KafkaBolt(str(bootstrap), str(config.get("output.topic", "click-counts")),
                         key_field="user", fields=COUNT_FIELDS)
        late = KafkaBolt(str(bootstrap), str(config.get("late.topic", "clicks-late")),
                         key_field="user", value_field="click", value_format="bytes")
    else:
        builder.set_spout("lines", LineSpout(str(config.get("input.path") or SAMPLE), field="line"))
        # One task, so the clicks reach the window in the file's order: lateness is
        # judged by the order each input task sends in.
        builder.set_bolt("clicks", ParseLine()).shuffle_grouping("lines")
        if config.get("output.path"):
            sink = JsonLinesSink(str(config["output.path"]), fields=COUNT_FIELDS)
        if config.get("late.path"):
            late = LineSink(str(config["late.path"]))

    counter = CountClicks(aggregate=config.get("clicks.aggregate", True))
    builder.set_bolt("count", counter, parallelism("count", 2)).fields_grouping("clicks", ["user"])
    if sink is not None:
        builder.set_bolt("sink", sink, parallelism("sink", 2)).local_or_shuffle_grouping("count")
    late_inputs = [("count", LATE)] + ([("clicks", LATE)] if not bootstrap else [])
    if late is not None:
        declarer = builder.set_bolt("late", late)
        for component, stream in late_inputs:
            declarer.shuffle_grouping(component, stream)
    if sink is None or late is None:
        report = builder.set_bolt("report", Report())
        if sink is None:
            report.global_grouping("count")
        if late is None:
            for component, stream in late_inputs:
                report.global_grouping(component, stream)

    # A click's tree completes once the checkpoint covering its window state commits
    # (every topology.state.checkpoint.interval.ms, 1 s by default), so a spout task needs
    # a checkpoint interval's worth of clicks in flight, and more: with the engine's 500
    # it could read at most 500 clicks a checkpoint. -c still wins.
    return builder.build({"topology.max.spout.pending": 50_000})
