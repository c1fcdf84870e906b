"""A worker's output, from its pipe to its log file (rotated by size) and to stdout.

A supervisor starts each worker with stdout and stderr on one pipe and runs a
:class:`LogPump` thread per worker. The pump appends what it reads to the slot's log
file, and once the file holds ``max_bytes`` moves it aside to ``NAME.1`` (replacing the
one before) at a line boundary: a worker that logs for weeks uses at most twice
``max_bytes`` of disk, whatever it writes. With ``echo``, every line also goes to the
supervisor's own stdout, where ``kubectl logs`` and a cluster's log shipping read
containers.

The pump never drops output: a worker waits on its pipe while the disk or stdout is slow.
When the worker exits, the pump writes what remains and closes the file.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import IO, BinaryIO

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
READ_BYTES = 64 * 1024
MAX_LINE_BYTES = 1024 * 1024
"""Output without a newline for this long is written as it is, so that a worker writing
binary junk cannot make the pump hold it all."""


def rotated(path: Path) -> Path:
    """Where :class:`LogPump` moves a full log file: ``NAME.1``."""
    return path.with_name(path.name + ".1")


class LogPump:
    """Copies ``source`` to ``path`` (and ``echo``) until ``source`` reaches its end."""

    def __init__(self, source: IO[bytes], path: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 echo: BinaryIO | None = None) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.source = source
        self.path = path
        self.max_bytes = max_bytes
        self.echo = echo
        self._thread = threading.Thread(target=self._run, name=f"log {path.name}", daemon=True)

    def start(self) -> LogPump:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        out = open(self.path, "ab")
        size = out.tell()
        pending = b""  # the start of a line not yet ended
        try:
            while chunk := self.source.read1(READ_BYTES):  # type: ignore[attr-defined]
                data = pending + chunk
                end = data.rfind(b"\n") + 1
                if len(data) - end > MAX_LINE_BYTES:
                    end = len(data)
                whole, pending = data[:end], data[end:]
                if not whole:
                    continue
                if size >= self.max_bytes:
                    out.close()
                    os.replace(self.path, rotated(self.path))
                    out, size = open(self.path, "ab"), 0
                out.write(whole)
                out.flush()
                size += len(whole)
                if self.echo is not None:
                    self.echo.write(whole)
                    self.echo.flush()
            if pending:
                out.write(pending + b"\n")
                if self.echo is not None:
                    self.echo.write(pending + b"\n")
                    self.echo.flush()
        finally:
            out.close()
            self.source.close()
