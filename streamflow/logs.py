"""Structured logs of workers, and reading them back for ``streamflow logs``.

A worker writes one JSON object per log event to stderr, which its supervisor appends to
the slot's log file: time, level, logger, message, and the topology, worker, component
and task it concerns. Component and task come from a context variable that each
executor's asyncio task carries (:data:`TASK`), so a user's ``logging`` call inside a bolt
is attributed to that bolt's task with no argument to pass. Nothing on the hot path logs
per tuple; errors of user code are logged at most every few seconds per task
(:mod:`streamflow.stats`).

A supervisor's log pump (:mod:`streamflow.logpump`) writes the file and rotates it by
size. Supervisors serve their workers' files (:func:`read_new_lines`); nimbus merges them
across supervisors for ``streamflow logs NAME``, so a user never has to find a host.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

TASK: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar("streamflow_task", default=None)
"""(component, task) of the executor whose asyncio task is running."""

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TAIL_BYTES = 256 * 1024
"""How far back from the end a first read of a log file starts."""
MAX_READ_BYTES = 1024 * 1024
"""Most bytes one read returns; a follower catches up over several reads."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with fixed fields (topology, worker) and the task's."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        super().__init__()
        self._fields = dict(fields)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": round(record.created, 3), "level": record.levelname, "logger": record.name,
            **self._fields,
        }
        task = TASK.get()
        if task is not None:
            line["component"], line["task"] = task
        line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_to_stderr_as_json(fields: Mapping[str, Any], level: str) -> None:
    """Make every log record of this process a JSON line on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(fields))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def parse_line(raw: str) -> dict[str, Any]:
    """A log line as data; a line that is not one of ours (a crash's traceback, output
    of a native library) becomes a message of level RAW."""
    try:
        line = json.loads(raw)
    except ValueError:
        line = None
    if not isinstance(line, dict) or "message" not in line:
        return {"time": None, "level": "RAW", "message": raw}
    return line


def read_new_lines(path: Path, offset: int | None) -> tuple[list[dict[str, Any]], int]:
    """Whole lines of ``path`` from byte ``offset`` (None: the last :data:`TAIL_BYTES`),
    and the offset to read from next time. A file shorter than ``offset`` was rotated:
    reading starts again at its beginning."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return [], 0
    mid_line = offset is None and size > TAIL_BYTES
    if offset is None:
        offset = max(0, size - TAIL_BYTES)
    elif offset > size:
        offset = 0
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(MAX_READ_BYTES)
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode("utf-8", "replace").splitlines()[1 if mid_line else 0:]
    return [parse_line(line) for line in lines if line.strip()], offset + end


def format_line(line: Mapping[str, Any]) -> str:
    """A log line for a terminal: time, level, where, message (and the exception)."""
    when = "-" if line.get("time") is None else (
        time.strftime("%H:%M:%S", time.localtime(line["time"])) + f".{int(line['time'] * 1000) % 1000:03d}")
    where = line.get("worker", "")
    if "component" in line:
        where = f"{line['component']}[{line['task']}] {where}"
    text = f"{when} {line.get('level', '-'):<7} {where.strip() or '-'}: {line['message']}"
    if line.get("exception"):
        text += "\n" + line["exception"]
    return text
