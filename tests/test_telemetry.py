"""Task reports, their windows, the per-component view, Prometheus families and the
status table: pure logic, with hand-made figures."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from streamflow_connectors.kafka.client import KafkaClientError

from streamflow import TopologyBuilder
from streamflow.acking import RecentFailures
from streamflow.components import BasicBolt
from streamflow.metrics import TopologyCollector, WorkerCollector
from streamflow.stats import Histogram, TaskStats
from streamflow.status_view import format_status
from streamflow.telemetry import RATE_SECS, SAMPLE_SECS, WINDOW_SECS, TaskHistory, combine, task_report
from streamflow.testing import CollectBolt, Ledger, ListSpout
from streamflow.tuples import Tuple
from streamflow.worker import Worker


def report(stats: TaskStats, history: TaskHistory, now: float, kind: str = "bolt", **extra: Any) -> dict[str, Any]:
    return task_report(stats, kind, history, now, queue=extra.get("queue", 0),
                       backpressure=extra.get("backpressure", 0.0), metrics=extra.get("metrics", {}))


def test_windows_run_from_the_start_then_cover_the_last_ten_minutes_and_ten_seconds() -> None:
    stats = TaskStats("split", 3)
    history = TaskHistory(stats, started=1000.0)
    first = report(stats, history, 1000.0 + 1)
    assert first["window"]["seconds"] == 1 and first["recent"]["seconds"] == 1
    # one tuple per second, one second busy in four, for twenty minutes
    last: dict[str, Any] = {}
    for second in range(2, 1201):
        stats.executed += 1
        stats.busy += 0.25
        last = report(stats, history, 1000.0 + second)
    assert last["executed"] == 1199  # since start
    window = last["window"]
    assert WINDOW_SECS <= window["seconds"] < WINDOW_SECS + SAMPLE_SECS
    assert window["executed"] == window["seconds"]  # one per second over the window
    assert abs(window["busy"] / window["seconds"] - 0.25) < 1e-6
    assert RATE_SECS <= last["recent"]["seconds"] < RATE_SECS + SAMPLE_SECS
    assert last["recent"]["executed"] == last["recent"]["seconds"]


def test_latency_windows_hold_only_recent_observations() -> None:
    stats = TaskStats("sink", 1)
    history = TaskHistory(stats, started=0.0)
    stats.execute_latency.add_many(2.0, 100)  # slow at first
    for second in range(1, 700):
        report(stats, history, float(second))
    stats.execute_latency.add_many(0.001, 10)
    last = report(stats, history, 700.0)
    window = Histogram.from_sparse(last["window"]["execute_latency"])
    assert window.total == 10 and (window.quantile(0.99) or 1.0) < 0.0011  # the slow start has left the window
    assert Histogram.from_sparse(last["execute_latency"]).total == 110  # since start keeps all


def test_a_component_view_sums_tasks_and_shows_its_busiest_task() -> None:
    reports = []
    for task, (busy, executed) in enumerate([(30.0, 600), (90.0, 1200)], start=1):
        stats = TaskStats("count", task)
        history = TaskHistory(stats, started=0.0)
        report(stats, history, 50.0)  # the 10-second base
        stats.executed, stats.busy, stats.errors = executed, busy, task
        stats.execute_latency.add_many(0.002, executed)
        reports.append(report(stats, history, 100.0, queue=5 * task, backpressure=0.5,
                              metrics={"kafka.lag": {"partition=t/0": task}, "seen": 1}))
    view = combine("bolt", reports)
    assert view["executed"] == 1800 and view["errors"] == 3 and view["queue"] == 15
    assert view["capacity"] == 0.9  # 90 s busy in 100 s: the busier task, not the average
    assert view["rate"] == round(600 / 50 + 1200 / 50, 1)
    assert view["window"]["executed"] == 1800 and view["window"]["seconds"] == 100
    assert view["backpressure_seconds"] == 1.0
    assert view["execute_latency_ms"]["p99"] >= 2.0
    assert view["metrics"] == {"kafka.lag": {"partition=t/0": 3}, "seen": 2}


def test_recent_failures_count_each_failed_id_once_and_stay_bounded() -> None:
    failures = RecentFailures(limit=3)
    for msg_id in (1, 2, 3, 4, [5]):  # a list cannot be tracked: ignored
        failures.add(msg_id)
    assert not failures.take(1)  # forgotten: beyond the limit
    assert failures.take(4) and not failures.take(4)
    assert not failures.take([5])


class Sleepy(BasicBolt):
    """Takes about a millisecond per tuple."""

    outputs = ["n"]

    def process(self, tup: Tuple) -> None:
        time.sleep(0.001)
        self.emit((tup["n"],))


def test_an_error_is_logged_as_one_line_and_its_traceback_only_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    stats = TaskStats("sentences", 3)

    def record(exc: Exception, doing: str) -> logging.LogRecord:
        try:
            raise exc
        except Exception as caught:
            stats._last_logged = 0.0  # past the log's rate limit
            stats.record_error(caught, doing)
        return caplog.records[-1]

    with caplog.at_level(logging.WARNING, logger="streamflow.errors"):
        away = record(KafkaClientError("Kafka at 127.0.0.1:1: Connection refused"), "next_tuple")
        bug = record(ValueError("a bug in a bolt"), "process")
    assert away.getMessage().startswith("component sentences task 3: next_tuple: KafkaClientError: Kafka at "
                                        "127.0.0.1:1: Connection refused at ")
    assert away.getMessage().endswith("(errors so far: 1)")
    assert bug.getMessage().startswith("component sentences task 3: process: ValueError: a bug in a bolt at ")
    assert bug.getMessage().endswith("(errors so far: 2)") and __file__ in bug.getMessage()
    assert away.exc_info is None and bug.exc_info is None and "Traceback" not in caplog.text
    with caplog.at_level(logging.DEBUG, logger="streamflow.errors"):
        away = record(KafkaClientError("Kafka at 127.0.0.1:1: Connection refused"), "next_tuple")
        bug = record(ValueError("a bug in a bolt"), "process")
    assert away.exc_info is None  # its line says all
    assert bug.exc_info is not None and bug.exc_info[0] is ValueError
    assert stats.errors == 4 and stats.last_error is not None and "a bug in a bolt" in stats.last_error.message


def test_execute_latency_and_busy_time_measure_the_bolt() -> None:
    builder = TopologyBuilder("sleepy")
    builder.set_spout("source", ListSpout([(i,) for i in range(200)], ["n"], Ledger()))
    builder.set_bolt("sleepy", Sleepy()).shuffle_grouping("source")
    builder.set_bolt("sink", CollectBolt(Ledger())).shuffle_grouping("sleepy")
    worker = Worker(builder.build())
    asyncio.run(worker.run_until_finished())
    sleepy = next(e for e in worker.executors if e.component == "sleepy").stats
    assert sleepy.executed == 200
    assert sleepy.busy >= 0.2
    p50 = sleepy.execute_latency.quantile(0.5)
    assert p50 is not None and 0.001 <= p50 < 0.01


def test_prometheus_families_carry_task_labels_and_component_metric_labels() -> None:
    stats = TaskStats("reader", 7)
    stats.emitted, stats.acked = 10, 9
    stats.complete_latency.add_many(0.004, 9)
    history = TaskHistory(stats, started=0.0)
    spout = report(stats, history, 5.0, kind="spout",
                   metrics={"kafka.lag": {"partition=events/0": 4, "partition=events/1": 0},
                            "kafka.consumed_records": 10})
    registry = CollectorRegistry()
    registry.register(WorkerCollector("etl", lambda: [spout]))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}
    task = (("component", "reader"), ("task", "7"), ("topology", "etl"))
    assert samples[("streamflow_tuples_emitted_total", task)] == 10
    assert samples[("streamflow_complete_latency_seconds_count", task)] == 9
    assert samples[("streamflow_complete_latency_seconds_bucket", (*task[:1], ("le", "+Inf"), *task[1:]))] == 9
    lag = ("streamflow_kafka_lag", (("component", "reader"), ("partition", "events/0"), ("task", "7"),
                                    ("topology", "etl")))
    assert samples[lag] == 4
    assert samples[("streamflow_kafka_consumed_records", task)] == 10


def test_nimbus_families_are_per_component_and_the_table_marks_a_busy_component() -> None:
    stats = TaskStats("count", 2)
    history = TaskHistory(stats, started=0.0)
    stats.executed, stats.busy = 500, 9.5
    view = combine("bolt", [report(stats, history, 10.0)])
    status = {"name": "wc", "id": "wc-1", "status": "active", "uptime": 10.0, "log_level": "INFO",
              "workers": [{"slot": "s-1", "host": "h", "port": 1, "tasks": [2], "alive": True, "uptime": 9.0}],
              "components": {"count": {"tasks": 1, "inputs": [], **view, "last_error": None}},
              "errors": {"count": [{"time": 0.0, "worker": "s-1", "message": "ValueError: x"}]}}
    registry = CollectorRegistry()
    registry.register(TopologyCollector(lambda: [status]))
    text = generate_latest(registry).decode()
    assert 'streamflow_capacity{component="count",topology="wc"} 0.95' in text
    table = format_status(status)
    assert "0.95!" in table and "ValueError: x" in table
