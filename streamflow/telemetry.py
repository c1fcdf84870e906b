"""What a worker says about its tasks, and how nimbus sums it per component.

A worker reports each task about once a second (its heartbeat, its ``/metrics``): the
counters since the task started, the same counters over the last ten minutes (the
window Storm's UI shows) and over the last ten seconds (the live rate), the task's busy
time (capacity), its inbox's depth and backpressure time, latency histograms, and the
component's own metrics. Windows come from snapshots of the cumulative figures the
worker keeps every :data:`SAMPLE_SECS`, so the hot path only ever bumps counters.

Nimbus combines the reports of all tasks of a component with :func:`combine`; the CLI's
``status``, the web UI and nimbus's ``/metrics`` all read that one view.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from streamflow.stats import Histogram, TaskStats

WINDOW_SECS = 600.0
RATE_SECS = 10.0
SAMPLE_SECS = 5.0
COUNTERS = ("emitted", "executed", "acked", "failed", "replayed")

Report = dict[str, Any]


@dataclass(frozen=True)
class Snapshot:
    """A task's cumulative figures at one moment."""

    time: float
    counters: tuple[int, ...]
    busy: float
    execute_latency: tuple[int, ...]
    complete_latency: tuple[int, ...]

    @classmethod
    def of(cls, stats: TaskStats, now: float) -> Snapshot:
        return cls(now, tuple(getattr(stats, c) for c in COUNTERS), stats.busy,
                   tuple(stats.execute_latency.counts), tuple(stats.complete_latency.counts))

    def since(self, base: Snapshot) -> Report:
        """The figures between ``base`` and this snapshot, as a report's window."""
        window: Report = {"seconds": round(self.time - base.time, 3)}
        for name, now, then in zip(COUNTERS, self.counters, base.counters, strict=True):
            window[name] = now - then
        window["busy"] = round(self.busy - base.busy, 6)
        window["execute_latency"] = _minus(self.execute_latency, base.execute_latency).sparse()
        window["complete_latency"] = _minus(self.complete_latency, base.complete_latency).sparse()
        return window


def _minus(later: tuple[int, ...], earlier: tuple[int, ...]) -> Histogram:
    return Histogram([a - b for a, b in zip(later, earlier, strict=True)])


class TaskHistory:
    """Snapshots of one task every :data:`SAMPLE_SECS` over the last :data:`WINDOW_SECS`,
    starting with the empty one of the task's start, so a young task's windows run
    from its start."""

    def __init__(self, stats: TaskStats, started: float) -> None:
        self._samples: deque[Snapshot] = deque([Snapshot.of(TaskStats(stats.component, stats.task), started)])

    def record(self, now: Snapshot) -> None:
        if now.time - self._samples[-1].time >= SAMPLE_SECS:
            self._samples.append(now)
        while len(self._samples) > 1 and self._samples[1].time <= now.time - WINDOW_SECS:
            self._samples.popleft()

    def base(self, now: float, seconds: float) -> Snapshot:
        """The newest snapshot at least ``seconds`` old, or the oldest one kept."""
        for sample in reversed(self._samples):
            if sample.time <= now - seconds:
                return sample
        return self._samples[0]


def task_report(stats: TaskStats, kind: str, history: TaskHistory, now: float, *, queue: int,
                backpressure: float, metrics: Mapping[str, Any]) -> Report:
    """One task's report: JSON data, for heartbeats and ``/metrics``."""
    snapshot = Snapshot.of(stats, now)
    history.record(snapshot)
    recent = snapshot.since(history.base(now, RATE_SECS))
    return {
        "task": stats.task, "component": stats.component, "kind": kind,
        **{c: getattr(stats, c) for c in COUNTERS},
        "errors": stats.errors, "busy": round(stats.busy, 6), "queue": queue,
        "backpressure_seconds": round(backpressure, 6),
        "execute_latency": stats.execute_latency.sparse(),
        "complete_latency": stats.complete_latency.sparse(),
        "window": snapshot.since(history.base(now, WINDOW_SECS)),
        "recent": {k: recent[k] for k in ("seconds", *COUNTERS)},
        "metrics": dict(metrics),
    }


def capacity(window: Mapping[str, Any]) -> float | None:
    """Share of the window a task spent handling input (None for spouts)."""
    if not window.get("seconds"):
        return None
    return round(min(window["busy"] / window["seconds"], 1.0), 3)


def rate(kind: str, recent: Mapping[str, Any]) -> float:
    """Tuples per second: emitted for a spout, executed otherwise."""
    seconds = recent.get("seconds") or 0
    done = recent["emitted"] if kind == "spout" else recent["executed"]
    return round(done / seconds, 1) if seconds > 0 else 0.0


def latency_ms(histogram: Histogram) -> dict[str, float | None] | None:
    """p50 and p99 in milliseconds (bucket upper bounds), or None without observations."""
    if not histogram.total:
        return None
    return {q: round(v * 1000, 3) for q, v in (("p50", histogram.quantile(0.5)),
                                                ("p99", histogram.quantile(0.99))) if v is not None}


def combine(kind: str, reports: Iterable[Report]) -> Report:
    """A component's view from its tasks' reports: counters summed, windows summed (the
    longest task's window length), capacity of its busiest task, latency percentiles of
    the merged window histograms; cumulative histograms kept for ``/metrics``."""
    view: Report = {c: 0 for c in (*COUNTERS, "errors", "queue")}
    view.update(kind=kind, busy=0.0, backpressure_seconds=0.0, rate=0.0, capacity=None, metrics={})
    window: Report = {c: 0 for c in COUNTERS}
    window["seconds"] = 0.0
    histograms = {name: Histogram() for name in ("execute", "complete", "window_execute", "window_complete")}
    for r in reports:
        for c in (*COUNTERS, "errors", "queue"):
            view[c] += r[c]
        view["backpressure_seconds"] += r["backpressure_seconds"]
        view["busy"] += r["busy"]
        view["rate"] += rate(kind, r["recent"])
        w = r["window"]
        for c in COUNTERS:
            window[c] += w[c]
        window["seconds"] = max(window["seconds"], w["seconds"])
        if kind != "spout":
            busy = capacity(w)
            if busy is not None and (view["capacity"] is None or busy > view["capacity"]):
                view["capacity"] = busy
        histograms["execute"].merge(Histogram.from_sparse(r["execute_latency"]))
        histograms["complete"].merge(Histogram.from_sparse(r["complete_latency"]))
        histograms["window_execute"].merge(Histogram.from_sparse(w["execute_latency"]))
        histograms["window_complete"].merge(Histogram.from_sparse(w["complete_latency"]))
        add_metrics(view["metrics"], r.get("metrics") or {})
    view["rate"] = round(view["rate"], 1)
    view["backpressure_seconds"] = round(view["backpressure_seconds"], 3)
    view["busy"] = round(view["busy"], 3)
    view["window"] = window
    view["execute_latency_ms"] = latency_ms(histograms["window_execute"])
    view["complete_latency_ms"] = latency_ms(histograms["window_complete"])
    view["execute_latency"] = histograms["execute"].sparse()
    view["complete_latency"] = histograms["complete"].sparse()
    return view


def add_metrics(total: dict[str, Any], metrics: Mapping[str, Any]) -> None:
    """Sum a task's component metrics into ``total``: numbers, and numbers by label."""
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            by_label = total.setdefault(name, {})
            if isinstance(by_label, dict):
                for label, v in value.items():
                    by_label[label] = by_label.get(label, 0) + v
        elif isinstance(value, (int, float)) and not isinstance(total.get(name, 0), dict):
            total[name] = total.get(name, 0) + value
