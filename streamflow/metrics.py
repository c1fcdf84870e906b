"""Prometheus exposition: what workers, nimbus and supervisors serve at ``GET /metrics``.

Workers export their own tasks (labels topology, component, task) from their last
heartbeat's reports; nimbus exports every topology per component (labels topology,
component), summed from the heartbeats in ZooKeeper at scrape time, so any nimbus,
leader or standby, answers for the whole cluster. Both go through :func:`task_families`,
so a metric means the same wherever it is scraped. Label sets are bounded: topology,
component, task, and a component metric's own label (a Kafka partition, a client id);
never a tuple or a key.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from streamflow.stats import Histogram
from streamflow.telemetry import COUNTERS, Report, capacity

EXPORTED_BOUNDS = Histogram.BOUNDS[::5]
"""Histogram buckets as exported: every fifth internal bound (2.5x apart, 0.1 ms to
1 h, ~22 buckets) keeps series per histogram few while p50/p99 stay readable."""

Row = tuple[Sequence[str], Report]
"""Label values and the figures (a task's report or a component's combined view)."""


def task_families(rows: Iterable[Row], labels: Sequence[str]) -> Iterator[Any]:
    """Metric families for rows of task reports or component views."""
    labels = list(labels)
    counters = {c: CounterMetricFamily(f"streamflow_tuples_{c}", f"Tuples {c}", labels=labels) for c in COUNTERS}
    errors = CounterMetricFamily("streamflow_errors", "Exceptions raised by user code", labels=labels)
    busy = CounterMetricFamily("streamflow_busy_seconds", "Seconds spent handling input (bolts, ackers)",
                               labels=labels)
    capacities = GaugeMetricFamily("streamflow_capacity", "Share of the last 10 minutes spent busy "
                                 "(the busiest task of a component)", labels=labels)
    queue = GaugeMetricFamily("streamflow_inbox_tuples", "Tuples waiting in inboxes", labels=labels)
    backpressure = CounterMetricFamily("streamflow_backpressure_seconds",
                                       "Seconds senders waited on full inboxes", labels=labels)
    latencies = {
        name: HistogramMetricFamily(f"streamflow_{name}_latency_seconds", doc, labels=labels)
        for name, doc in (("execute", "Time to handle one input tuple (bolts)"),
                          ("complete", "Spout emit to full ack of a tuple tree"))
    }
    own: dict[str, GaugeMetricFamily] = {}
    for values, r in rows:
        values = list(values)
        for c in COUNTERS:
            counters[c].add_metric(values, r[c])
        errors.add_metric(values, r["errors"])
        queue.add_metric(values, r["queue"])
        backpressure.add_metric(values, r["backpressure_seconds"])
        if r["kind"] != "spout":
            busy.add_metric(values, r["busy"])
            if r.get("capacity") is not None:
                capacities.add_metric(values, r["capacity"])
        for name, family in latencies.items():
            pairs = r[f"{name}_latency"]
            if pairs:
                buckets, total = _buckets(Histogram.from_sparse(pairs))
                family.add_metric(values, buckets, sum_value=total)
        for metric, value in (r.get("metrics") or {}).items():
            _add_own(own, metric, value, labels, values)
    yield from counters.values()
    yield from (errors, busy, capacities, queue, backpressure, *latencies.values(), *own.values())


def _buckets(histogram: Histogram) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets at :data:`EXPORTED_BOUNDS` and an estimate of the sum from
    the internal bucket bounds (the histogram keeps no sum)."""
    buckets: list[tuple[str, float]] = []
    cumulative, i = 0, 0
    counts = histogram.counts
    for bound in EXPORTED_BOUNDS:
        while i < len(Histogram.BOUNDS) and Histogram.BOUNDS[i] <= bound:
            cumulative += counts[i]
            i += 1
        buckets.append((repr(bound), cumulative))
    buckets.append(("+Inf", histogram.total))
    total = float(sum(b * n for b, n in zip(Histogram.BOUNDS, counts, strict=False)))
    return buckets, total


def _add_own(own: dict[str, GaugeMetricFamily], metric: str, value: Any, labels: list[str],
             values: list[str]) -> None:
    """A component metric as ``streamflow_<name>``, with its own label if it has one."""
    name = "streamflow_" + re.sub(r"[^a-zA-Z0-9_]", "_", metric)
    if isinstance(value, Mapping):
        for key, v in value.items():
            label, _, label_value = str(key).partition("=")
            label = re.sub(r"[^a-zA-Z0-9_]", "_", label) or "label"
            family = own.setdefault(name, GaugeMetricFamily(name, f"Component metric {metric}",
                                                            labels=[*labels, label]))
            if family.samples and len(family.samples[0].labels) != len(labels) + 1:
                continue  # the same name also given without a label: keep the first form
            family.add_metric([*values, label_value], v)
    elif isinstance(value, (int, float)):
        family = own.setdefault(name, GaugeMetricFamily(name, f"Component metric {metric}", labels=labels))
        if not family.samples or len(family.samples[0].labels) == len(labels):
            family.add_metric(values, value)


class TopologyCollector(Collector):
    """Nimbus's export: ``status()`` answers (its view of each topology) as families."""

    def __init__(self, topologies: Callable[[], Sequence[dict[str, Any]]]) -> None:
        self._topologies = topologies

    def collect(self) -> Iterator[Any]:
        statuses = self._topologies()
        rows = [((s["name"], component), view) for s in statuses for component, view in s["components"].items()]
        yield from task_families(rows, ["topology", "component"])
        workers = GaugeMetricFamily("streamflow_workers", "Workers assigned and heard from",
                                    labels=["topology", "state"])
        for status in statuses:
            alive = sum(1 for w in status["workers"] if w["alive"])
            workers.add_metric([status["name"], "alive"], alive)
            workers.add_metric([status["name"], "silent"], len(status["workers"]) - alive)
        yield workers


class WorkerCollector(Collector):
    """A worker's export: its tasks' last reports, per task."""

    def __init__(self, topology: str, reports: Callable[[], Sequence[Report]]) -> None:
        self._topology = topology
        self._reports = reports

    def collect(self) -> Iterator[Any]:
        rows = [((self._topology, r["component"], str(r["task"])), {**r, "capacity": capacity(r["window"])})
                for r in self._reports()]
        yield from task_families(rows, ["topology", "component", "task"])


class SupervisorMetrics:
    """A supervisor's own counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.worker_starts = Counter("streamflow_worker_starts", "Worker processes started",
                                     ["topology"], registry=self.registry)
        self.worker_restarts = Counter("streamflow_worker_restarts", "Worker processes restarted after dying",
                                       ["topology"], registry=self.registry)


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
