"""Prometheus exposition: what nimbus and supervisors serve at ``GET /metrics``.

Nimbus reads the topologies' heartbeats from ZooKeeper at scrape time (so any nimbus,
leader or standby, answers for the whole cluster) and exports per topology and component:
tuple counters, the spouts' complete-latency histogram and component metrics (a Kafka
spout's consumed records, say). Label sets are bounded: topology, component, and for
component metrics the metric's name; never a tuple or a key.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from streamflow.stats import Histogram

COUNTERS = ("emitted", "executed", "acked", "failed")


class TopologyCollector(Collector):
    """Turns ``status()`` answers (nimbus's view of each topology) into metric families."""

    def __init__(self, topologies: Callable[[], Sequence[dict[str, Any]]]) -> None:
        self._topologies = topologies

    def collect(self) -> Iterator[Any]:
        counters = {c: CounterMetricFamily(f"streamflow_tuples_{c}", f"Tuples {c}, summed over tasks",
                                           labels=["topology", "component"]) for c in COUNTERS}
        latency = HistogramMetricFamily("streamflow_complete_latency_seconds",
                                        "Spout emit to full ack of a tuple tree", labels=["topology", "component"])
        extra = GaugeMetricFamily("streamflow_component_metric", "A component's own metrics (metrics())",
                                  labels=["topology", "component", "name"])
        workers = GaugeMetricFamily("streamflow_workers", "Workers assigned and heard from",
                                    labels=["topology", "state"])
        for status in self._topologies():
            name = status["name"]
            alive = sum(1 for w in status["workers"] if w["alive"])
            workers.add_metric([name, "alive"], alive)
            workers.add_metric([name, "silent"], len(status["workers"]) - alive)
            for component, c in status["components"].items():
                for counter in COUNTERS:
                    counters[counter].add_metric([name, component], c[counter])
                for metric, value in (c.get("metrics") or {}).items():
                    extra.add_metric([name, component, metric], value)
                counts = c.get("complete_latency_histogram")
                if counts:
                    histogram = Histogram(counts)
                    cumulative, buckets = 0, []
                    for bound, n in zip((*Histogram.BOUNDS, float("inf")), counts, strict=True):
                        cumulative += n
                        buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
                    latency.add_metric([name, component], buckets, sum_value=histogram_sum(histogram))
        yield from counters.values()
        yield latency
        yield extra
        yield workers


def histogram_sum(histogram: Histogram) -> float:
    """An estimate of the observations' sum from bucket bounds (the buckets keep no sum)."""
    return sum(bound * n for bound, n in zip(Histogram.BOUNDS, histogram.counts, strict=False))


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
