"""ETL: JSON events -> parse (shuffle) -> validate (shuffle) -> enrich (fields on user) -> sink.

    streamflow local topologies/etl.py -c output.path=OUT
        reads the sample events beside this file;
    streamflow local topologies/etl.py -c input.path=IN -c output.path=OUT [-c deadletter.path=DLQ]
        reads IN, one JSON event {"id": int, "user": str, "amount": number} per line, and
        appends to OUT one JSON line {"id", "user", "amount", "user_total"} per valid event,
        where user_total is the user's running sum of amounts (the highest user_total
        written for a user is the sum of all their amounts).

A line that is not JSON, not an object, lacks a field or has a field of the wrong type
is dead-lettered: appended to DLQ as {"line": <the line as read>, "error": <reason>}, or,
without ``deadletter.path``, counted and the count printed ("invalid lines: N") at the
end. Invalid lines are acked, never replayed. Accepted: ``id`` an integer (not a bool),
``user`` a non-empty string, ``amount`` an integer or a float (not a bool); other fields
are dropped. NaN and Infinity are not JSON, so they fail as invalid JSON.

Other options: ``-c spout.parallelism=N`` (default 1), ``-c parse.parallelism=N``,
``-c validate.parallelism=N``, ``-c enrich.parallelism=N``, ``-c sink.parallelism=N``
(default 2 each), ``-c deadletter.parallelism=N`` (default 1).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import orjson
from streamflow_connectors.files import JsonLinesSink, LineSpout
from streamflow_connectors.kafka import KafkaBolt, KafkaSpout

from streamflow import (
    BasicBolt,
    BoltBase,
    ConfigError,
    SpoutBase,
    TaskContext,
    Topology,
    TopologyBuilder,
    Tuple,
)

SAMPLE = Path(__file__).with_name("events-sample.jsonl")
INVALID = "invalid"
"""The stream, of parse and of validate, that carries dead-lettered lines."""
OUTPUT_FIELDS = ["id", "user", "amount", "user_total"]
JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
              list: "an array", dict: "an object", type(None): "null"}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _json_type(value: Any) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


class Parse(BasicBolt):
    """Parses each line as a JSON object; anything else goes to the invalid stream."""

    outputs = {"default": ["line", "event"], INVALID: ["line", "error"]}

    def process(self, tup: Tuple) -> None:
        line = tup.values[0]
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self.emit((line, _one_line(f"invalid JSON: {exc}")), INVALID)
            return
        if isinstance(event, dict):
            self.emit((line, event))
        else:
            self.emit((line, f"expected a JSON object, got {_json_type(event)}"), INVALID)


class Validate(BasicBolt):
    """Checks the fields of an event; emits (id, user, amount) or the first problem found."""

    outputs = {"default": ["id", "user", "amount"], INVALID: ["line", "error"]}

    def process(self, tup: Tuple) -> None:
        line, event = tup.values
        error = self.problem(event)
        if error:
            self.emit((line, error), INVALID)
        else:
            self.emit((event["id"], event["user"], event["amount"]))

    @staticmethod
    def problem(event: dict[str, Any]) -> str | None:
        for name in ("id", "user", "amount"):
            if name not in event:
                return f"missing field {name!r}"
        id_, user, amount = event["id"], event["user"], event["amount"]
        if not isinstance(id_, int) or isinstance(id_, bool):
            return f"field 'id': expected an integer, got {_json_type(id_)}"
        if not isinstance(user, str):
            return f"field 'user': expected a string, got {_json_type(user)}"
        if not user:
            return "field 'user': expected a non-empty string, got an empty one"
        if not isinstance(amount, (int, float)) or isinstance(amount, bool):
            return f"field 'amount': expected a number, got {_json_type(amount)}"
        return None


class Enrich(BasicBolt):
    """Adds ``user_total``, the running sum of the user's amounts seen by this task;
    fields grouping on ``user`` sends all of a user's events to one task."""

    outputs = OUTPUT_FIELDS

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.totals: dict[str, int | float] = {}

    def process(self, tup: Tuple) -> None:
        id_, user, amount = tup.values
        total = self.totals.get(user, 0) + amount
        self.totals[user] = total
        self.emit((id_, user, amount, total))


class CountInvalid(BasicBolt):
    """Counts dead-lettered lines and prints the count when it stops (run it as one task)."""

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.count = 0

    def process(self, tup: Tuple) -> None:
        self.count += 1

    def cleanup(self) -> None:
        print(f"invalid lines: {self.count}", file=sys.stdout, flush=True)


def _line_of(record: Any) -> tuple[str]:
    """A Kafka record's value as the line the pipeline parses; a value that is not UTF-8
    raises, so the spout sends the record to the dead-letter topic."""
    return (record.value.decode("utf-8"),)


def build(config: Mapping[str, Any]) -> Topology:
    def parallelism(name: str, default: int) -> int:
        return config.get(f"{name}.parallelism", default)  # type: ignore[no-any-return]

    # Where events come from and where they go: the one place that chooses.
    source: SpoutBase
    sink: BoltBase
    deadletter: BoltBase
    bootstrap = config.get("kafka.bootstrap")
    if bootstrap:
        dlq_topic = str(config.get("deadletter.topic", "events-dlq"))
        source = KafkaSpout(str(bootstrap), [str(config.get("input.topic", "events"))],
                            group_id=config.get("kafka.group_id"), value_format="bytes",
                            record_to_values=_line_of, fields=["line"], dead_letter_topic=dlq_topic)
        sink = KafkaBolt(str(bootstrap), str(config.get("output.topic", "events-clean")),
                         key_field="user", fields=OUTPUT_FIELDS)
        deadletter = KafkaBolt(str(bootstrap), dlq_topic, fields=["line", "error"])
        deadletter_name, deadletter_tasks = "deadletter", parallelism("deadletter", 1)
    else:
        if not config.get("output.path"):
            raise ConfigError("etl: -c output.path=FILE (or -c kafka.bootstrap=HOST:PORT) is required")
        source = LineSpout(str(config.get("input.path") or SAMPLE), field="line")
        sink = JsonLinesSink(str(config["output.path"]), fields=OUTPUT_FIELDS)
        if config.get("deadletter.path"):
            deadletter = JsonLinesSink(str(config["deadletter.path"]), fields=["line", "error"])
            deadletter_name, deadletter_tasks = "deadletter", parallelism("deadletter", 1)
        else:
            deadletter, deadletter_name, deadletter_tasks = CountInvalid(), "invalid", 1

    builder = TopologyBuilder("etl")
    builder.set_spout("events", source, parallelism("spout", 1))
    builder.set_bolt("parse", Parse(), parallelism("parse", 2)).shuffle_grouping("events")
    builder.set_bolt("validate", Validate(), parallelism("validate", 2)).shuffle_grouping("parse")
    builder.set_bolt("enrich", Enrich(), parallelism("enrich", 2)).fields_grouping("validate", ["user"])
    builder.set_bolt("sink", sink, parallelism("sink", 2)).shuffle_grouping("enrich")
    (builder.set_bolt(deadletter_name, deadletter, deadletter_tasks)
     .shuffle_grouping("parse", INVALID).shuffle_grouping("validate", INVALID))
    return builder.build()
