"""The text form of a topology's status: what ``streamflow status`` and ``streamflow top``
print, from the same JSON the web UI draws (nimbus's ``status`` answer)."""

from __future__ import annotations

import time
from typing import Any, Mapping

CAPACITY_WARNING = 0.8
"""Capacity above which a component is marked: it is (close to) the bottleneck."""

COLUMNS = ("component", "kind", "tasks", "emitted", "executed", "acked", "failed", "replayed",
           "rate/s", "10m acked", "capacity", "exec p99", "complete p99", "queue", "errors")


def format_status(answer: Mapping[str, Any]) -> str:
    """Header, workers, one row per component and the last errors."""
    lines = [
        f"{answer['name']} ({answer['id']}): {answer['status']}, up {_duration(answer['uptime'])}, "
        f"{len(answer['workers'])} workers, log level {answer.get('log_level', 'INFO')}"
    ]
    for w in answer["workers"]:
        state = f"up {_duration(w['uptime'])}" if w["alive"] and w["uptime"] is not None else "not heard from"
        lines.append(f"  worker {w['host']}:{w['port']} ({w['slot']}) {state}, tasks {w['tasks']}")
    rows = [COLUMNS] + [_row(name, c) for name, c in answer["components"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for r in rows:
        lines.append("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)  # names left, numbers right
                               for i, (cell, w) in enumerate(zip(r, widths, strict=True))).rstrip())
    lines.extend(_state_lines(answer["components"]))
    for component, errors in answer["errors"].items():
        if errors:
            last = errors[-1]
            when = time.strftime("%H:%M:%S", time.localtime(last["time"]))
            lines.append(f"last error of {component} at {when} on {last['worker']}: {last['message']}")
    return "\n".join(lines)


def _row(name: str, c: Mapping[str, Any]) -> tuple[str, ...]:
    capacity = c.get("capacity")
    marked = "" if capacity is None else f"{capacity:.2f}" + ("!" if capacity > CAPACITY_WARNING else "")
    return (
        name, c["kind"], str(c["tasks"]), str(c["emitted"]),
        "-" if c["kind"] == "spout" else str(c["executed"]),
        str(c["acked"]), str(c["failed"]), str(c.get("replayed", 0)), f"{c.get('rate', 0):,.0f}",
        str(c.get("window", {}).get("acked", "-")), marked or "-",
        _ms(c.get("execute_latency_ms")), _ms(c.get("complete_latency_ms")),
        str(c.get("queue", 0)), str(c.get("errors", 0)),
    )


def _state_lines(components: Mapping[str, Any]) -> list[str]:
    """One line per stateful component: its state's size, its rollbacks, and the last
    committed checkpoint (the checkpoint coordinator's figures, the topology's)."""
    checkpoint = components.get("__checkpoint", {}).get("metrics", {})
    txid = checkpoint.get("checkpoint.committed_txid")
    if txid:
        when = time.strftime("%H:%M:%S", time.localtime(checkpoint["checkpoint.committed_time"]))
        last = (f"checkpoint {txid:.0f} committed at {when}, took {checkpoint['checkpoint.seconds']:.2f} s, "
                f"{checkpoint.get('checkpoint.failures', 0):.0f} failed")
    else:
        last = "no checkpoint committed yet"
    lines = []
    for name, c in components.items():
        m = c.get("metrics") or {}
        if "state.keys" in m:
            lines.append(f"state of {name}: {m['state.keys']:,.0f} keys, {_size(m['state.bytes'])}, "
                         f"{m['state.rollbacks']:.0f} task rollbacks since start; {last}")
    return lines


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1000
    return ""


def _ms(latency: Mapping[str, float] | None) -> str:
    return "-" if not latency or latency.get("p99") is None else f"{latency['p99']:g} ms"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
