"""Files as a source and a sink: one tuple per line in, one JSON line per tuple out."""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any, Callable, Mapping, Sequence

import orjson

from streamflow import Bolt, Spout, StreamflowError, TaskContext, Tuple
from streamflow.tuples import Origin

log = logging.getLogger(__name__)


class LineSpout(Spout):
    """Emits each line of a text file as a one-field tuple, reliably.

    The file is split among the spout's tasks by bytes: task ``i`` of ``n`` emits the lines
    whose first byte lies in ``[size * i // n, size * (i + 1) // n)``, so each task reads
    about ``1/n`` of the file, and every line is emitted by exactly one task. Lines end at
    ``\\n``, ``\\r\\n`` or a lone ``\\r``, as text mode reads them (universal newlines);
    the end is not part of the tuple. The message id is the byte offset of the line's first
    byte: unlike a line number, a task knows it without reading the lines before its share.
    A failed line is emitted again, up to ``max_retries`` times, then counted in
    ``dropped`` and logged. Bytes that are not UTF-8 are replaced (U+FFFD) rather than
    stopping the spout.

    In a topology with checkpointed state, each task's position is the offset of the first
    line of its share not yet done with (emitted and not failed since): a rollback, or a
    run started again with the same durable state, seeks back there.
    """

    BLOCK = 64 * 1024
    """Bytes read at a time: lines are split and counted per block, not per read call."""

    def __init__(self, path: str, field: str = "line", max_retries: int = 3) -> None:
        self.path = path
        self.outputs = [field]
        self.max_retries = max_retries
        self.dropped = 0

    def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise StreamflowError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        size = os.fstat(self._file.fileno()).st_size
        index, tasks = context.task_index, context.parallelism
        start, self._end = size * index // tasks, size * (index + 1) // tasks
        self._share = f"{self.path}:{index}/{tasks}"
        """This task's key in checkpointed positions."""
        self._lines: deque[bytes] = deque()
        """Lines read and not emitted yet, each with its end (bytes: their lengths are
        the offsets in the file)."""
        self._offset = max(start - 1, 0)
        """Where the first line of ``_lines`` starts in the file."""
        self._file.seek(self._offset)
        if start and self._read_block():
            # The line that holds byte start - 1 began before this share: the task before
            # emits it, and this task's first line is the one after it.
            self._offset += len(self._lines.popleft())
        self._first = self._offset
        self._in_flight: dict[int, str] = {}
        self._retries: dict[int, int] = {}
        self._replay: deque[int] = deque()

    def next_tuple(self) -> None:
        if self._replay:
            offset = self._replay.popleft()
            self.emit((self._in_flight[offset],), msg_id=offset)
            return
        if self._offset >= self._end or not (self._lines or self._read_block()):
            return
        line = self._lines.popleft()
        offset, self._offset = self._offset, self._offset + len(line)
        if self._retries and self._retries.get(offset, 0) > self.max_retries:
            return  # dropped, read again after a seek back
        text = line.rstrip(b"\r\n").decode("utf-8", "replace")
        self._in_flight[offset] = text
        self.emit((text,), msg_id=offset)

    def _read_block(self) -> bool:
        """Read about ``BLOCK`` bytes more, to the end of a line, into ``_lines``; False at
        the end of the file. ``bytes.splitlines`` cuts at text mode's line ends, and as a
        block ends after a b"\\n" (or at the end of the file), no b"\\r\\n" is cut in two."""
        block = self._file.read(self.BLOCK) + self._file.readline()
        if not block:  # the file was cut shorter since it was opened
            self._end = self._offset
            return False
        self._lines.extend(block.splitlines(keepends=True))
        return True

    def ack(self, msg_id: int) -> None:
        del self._in_flight[msg_id]
        self._retries.pop(msg_id, None)

    def fail(self, msg_id: int) -> None:
        retries = self._retries.get(msg_id, 0) + 1
        if retries > self.max_retries:
            self.dropped += 1
            del self._in_flight[msg_id]
            self._retries[msg_id] = retries  # so that a seek back does not emit it again
            log.warning("%s: the line at byte %d failed %d times; dropped", self.path, msg_id, retries)
            return
        self._retries[msg_id] = retries
        self._replay.append(msg_id)

    def exhausted(self) -> bool:
        return self._offset >= self._end and not self._replay

    def position(self) -> dict[str, int]:
        """The offset of this share's first line not done with: waiting for a replay, or
        not emitted yet."""
        return {self._share: min(self._replay, default=self._offset)}

    def seek(self, positions: Mapping[str, Any]) -> None:
        """Go back to this share's checkpointed offset (its start when there is none)."""
        self._offset = int(positions.get(self._share, self._first))
        self._file.seek(self._offset)
        self._lines.clear()
        self._in_flight.clear()
        self._replay.clear()

    def close(self) -> None:
        self._file.close()


class JsonLinesSink(Bolt):
    """Appends each input tuple to a file as one JSON object per line, and acks it only
    once the line is written.

    A batch of lines goes out in one ``write`` on a file opened with ``O_APPEND``, so the
    tasks of one sink (or several processes) can share a file without tearing lines.
    ``fields`` picks and orders the fields written (default: all of the input's).
    A tuple whose values JSON cannot encode is failed; a failed write fails the batch.

    Durability: by default a line is acked once the kernel has it, which survives the
    process (``kill -9``) but not the machine (power loss, kernel panic): behind a Kafka
    spout, its offset may then be committed for a line that never reached the disk.
    ``fsync=True`` acks a batch only after ``fsync`` returned, at the cost of one disk
    flush per batch.
    """

    def __init__(self, path: str, fields: Sequence[str] | None = None, fsync: bool = False) -> None:
        self.path = path
        self.fields = tuple(fields) if fields else None
        self.fsync = fsync

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StreamflowError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._data = bytearray()
        self._batch: list[Tuple] = []
        self._refused: list[Exception] = []
        """Why tuples of the batch could not be encoded (they were failed)."""
        self._records: dict[Origin, Callable[[Sequence[Any]], dict[str, Any]]] = {}

    def process(self, tup: Tuple) -> None:
        self.process_batch((tup,))

    def process_batch(self, tuples: Sequence[Tuple]) -> None:
        """Encode each tuple's line into the batch's buffer; a tuple that does not encode
        is failed alone (``end_batch`` raises once for it)."""
        data, taken, dumps = self._data, self._batch.append, orjson.dumps
        origin: Origin | None = None
        for tup in tuples:
            try:
                if tup.origin is not origin:
                    origin = tup.origin
                    record = self._records.get(origin) or self._record_of(origin)
                # Appended at once, not kept as one bytes object per line: orjson's output
                # buffers, when many are alive together, make glibc's malloc many times slower.
                data += dumps(record(tup.values))
            except Exception as exc:
                origin = None
                self.fail(tup)
                self._refused.append(exc)
                continue
            data += b"\n"
            taken(tup)

    def _record_of(self, origin: Origin) -> Callable[[Sequence[Any]], dict[str, Any]]:
        """How to turn the values of an input stream into the written record: one small
        function made for the stream (and kept), its dict a literal with keys and positions
        written in, because this runs per line and a literal is the cheapest dict to build."""
        fields = origin.fields
        names = self.fields if self.fields is not None else fields
        missing = [f for f in names if f not in fields]
        if missing:
            raise KeyError(f"input has no field {missing[0]!r} (fields: {', '.join(fields)})")
        literal = ", ".join(f"{name!r}: v[{fields.index(name)}]" for name in names)
        record: Callable[[Sequence[Any]], dict[str, Any]] = eval(f"lambda v: {{{literal}}}", {})
        self._records[origin] = record
        return record

    def end_batch(self) -> None:
        if self._batch:
            self._write()
        if self._refused:
            refused, self._refused = self._refused, []
            raise ValueError(f"{len(refused)} tuples could not be written to {self.path} (failed); the last: "
                             f"{type(refused[-1]).__name__}: {refused[-1]}")

    def _write(self) -> None:
        data, batch = self._data, self._batch
        self._data, self._batch = bytearray(), []
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
            if self.fsync:
                os.fsync(self._fd)
        except OSError:
            for tup in batch:
                self.fail(tup)
            raise
        self.ack_all(batch)

    def cleanup(self) -> None:
        os.close(self._fd)
