"""LineSpout: how a file's lines are shared among tasks, and replay; run without a worker."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import pytest
from streamflow_connectors.files import JsonLinesSink, LineSpout

from streamflow import TaskContext, Tuple
from streamflow.tuples import Origin

TASKS = (1, 2, 3, 4, 7, 16)


def open_task(path: Path, index: int, tasks: int, max_retries: int = 3,
              block: int = LineSpout.BLOCK) -> tuple[LineSpout, list[tuple[int, str]]]:
    """Task ``index`` of ``tasks`` of a LineSpout on ``path`` that reads ``block`` bytes at
    a time, opened, and the list its emits go to as (message id, line)."""
    spout = LineSpout(str(path), max_retries=max_retries)
    spout.BLOCK = block
    emitted: list[tuple[int, str]] = []

    def emit(values: tuple[Any, ...], stream: str = "default", msg_id: Any = None) -> None:
        emitted.append((msg_id, values[0]))

    spout.emit = emit
    spout.open({}, TaskContext("t", "lines", index, {"lines": tuple(range(tasks))}))
    return spout, emitted


def drain(spout: LineSpout, calls: int) -> None:
    """Call next_tuple until the spout says it is exhausted, at most ``calls`` times, then
    twice more, as the executor does while trees are in flight: those must emit nothing."""
    for _ in range(calls):
        if spout.exhausted():
            break
        spout.next_tuple()
    assert spout.exhausted(), f"not exhausted after {calls} calls"
    spout.next_tuple()
    spout.next_tuple()


def read_as_text(path: Path) -> list[str]:
    """The lines as text mode reads them (universal newlines, invalid UTF-8 replaced), as
    the spout read them before it shared the file out by bytes."""
    with path.open(encoding="utf-8", errors="replace", newline=None) as f:
        return [line.rstrip("\n") for line in f]


def assert_shared_exactly(path: Path, tasks: int, block: int = LineSpout.BLOCK) -> None:
    """Across ``tasks`` tasks, every line is emitted once, in file order from task 0 on,
    with its first byte's offset as message id, by the task whose byte range holds it."""
    data = path.read_bytes()
    size, everything = len(data), []
    for index in range(tasks):
        spout, emitted = open_task(path, index, tasks, block=block)
        drain(spout, size + 2)
        spout.close()
        low, high = size * index // tasks, size * (index + 1) // tasks
        assert all(low <= offset < high for offset, _ in emitted), (index, emitted)
        everything += emitted
    starts, offset = [], 0
    for line in data.splitlines(keepends=True):
        starts.append(offset)
        offset += len(line)
    assert everything == list(zip(starts, read_as_text(path), strict=True))


CASES = {
    "empty": b"",
    "one line": b"one line\n",
    "one line, no newline": b"one line",
    "no trailing newline": b"first\nsecond\nthird",
    "empty lines": b"\n\n\na\n\n",
    "lines longer than a range": b"x" * 1000 + b"\nshort\n" + b"y" * 500 + b"\nz",
    "CRLF": b"a\r\nbb\r\n\r\nccc\r\n",
    "lone CR": b"a\rbb\r\rccc",
    "mixed ends": b"a\r\n\rb\n\r\nc\r",
    "not UTF-8": "café\n".encode() + b"\xff\xfe\nok\n\xe2\x82\n",
}


@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("case", CASES)
def test_every_line_is_emitted_once_across_the_tasks(tmp_path: Path, case: str, tasks: int) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(CASES[case])
    assert_shared_exactly(path, tasks)


@pytest.mark.parametrize("block", [1, 2, 5, LineSpout.BLOCK])
def test_random_files_with_every_kind_of_line_end_are_shared_exactly(tmp_path: Path, block: int) -> None:
    """Blocks of a few bytes end anywhere: inside lines, between b"\\r" and b"\\n"."""
    rng = random.Random(5)
    pieces = [b"a", b"bc", b" ", "é".encode(), b"\xe2", b"\x82", b"\xff", b"\n", b"\r", b"\r\n"]
    path = tmp_path / "in.txt"
    for _ in range(300):
        path.write_bytes(b"".join(rng.choices(pieces, k=rng.randint(0, 60))))
        assert_shared_exactly(path, rng.randint(1, 9), block)


def test_a_file_cut_shorter_after_open_ends_the_task(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\n" + b"b" * 100_000 + b"\nc\n")
    spout, emitted = open_task(path, 0, 1)
    path.write_bytes(b"a\n")
    drain(spout, 10)
    assert emitted == [(0, "a")]


def test_a_failed_line_is_replayed_first_then_dropped_after_max_retries(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\nb\nc\n")
    spout, emitted = open_task(path, 0, 1, max_retries=2)
    spout.next_tuple()
    spout.next_tuple()
    spout.fail(0)
    spout.next_tuple()
    spout.next_tuple()
    assert emitted == [(0, "a"), (2, "b"), (0, "a"), (4, "c")]
    spout.ack(2)
    spout.ack(4)
    assert spout.exhausted()
    spout.fail(0)
    assert not spout.exhausted()  # a replay is due
    spout.next_tuple()
    with caplog.at_level(logging.WARNING):
        spout.fail(0)
    assert emitted[-1] == (0, "a") and len(emitted) == 5
    assert spout.dropped == 1 and spout.exhausted()
    assert "the line at byte 0 failed 3 times; dropped" in caplog.text
    spout.next_tuple()
    assert len(emitted) == 5


def test_a_spout_without_retries_drops_a_failed_line_at_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\n")
    spout, emitted = open_task(path, 0, 1, max_retries=0)
    spout.next_tuple()
    with caplog.at_level(logging.WARNING):
        spout.fail(0)
    assert spout.dropped == 1 and spout.exhausted()
    assert "the line at byte 0 failed 1 times; dropped" in caplog.text
    spout.next_tuple()
    assert emitted == [(0, "a")]


def test_the_position_is_the_first_line_not_done_with_and_seek_goes_back_to_it(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\nb\nc\nd\n")
    spout, emitted = open_task(path, 0, 1)
    spout.next_tuple()
    spout.next_tuple()
    assert spout.position() == {f"{path}:0/1": 4}
    spout.fail(0)
    assert spout.position() == {f"{path}:0/1": 0}  # the failed line waits for its replay
    spout.next_tuple()  # the replay of "a"
    position = spout.position()
    spout.next_tuple()
    spout.next_tuple()
    spout.seek(position)
    del emitted[:]
    drain(spout, 10)
    assert emitted == [(4, "c"), (6, "d")]
    spout.seek({})  # no checkpointed position: the share's start
    del emitted[:]
    drain(spout, 10)
    assert [line for _, line in emitted] == ["a", "b", "c", "d"]


def test_a_line_dropped_past_its_retries_is_not_emitted_again_after_a_seek(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"poison\nok\n")
    spout, emitted = open_task(path, 0, 1, max_retries=0)
    spout.next_tuple()
    spout.fail(0)
    spout.seek({})
    del emitted[:]
    drain(spout, 10)
    assert emitted == [(7, "ok")] and spout.dropped == 1


def test_each_task_positions_its_own_share(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(10)))
    first, _ = open_task(path, 0, 2)
    second, emitted = open_task(path, 1, 2)
    second.next_tuple()
    positions = {**first.position(), **second.position()}
    assert len(positions) == 2
    second.seek(positions)
    del emitted[:]
    drain(second, 20)
    assert [line for _, line in emitted] == [f"line {i}" for i in range(6, 10)]

# -- JsonLinesSink ------------------------------------------------------------------------


def write_lines(path: Path, fields: tuple[str, ...] | None, origin_fields: tuple[str, ...],
                rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Rows through a JsonLinesSink task (one batch), as the records it wrote."""
    sink = JsonLinesSink(str(path), fields)
    acked: list[Tuple] = []
    sink.ack_all = acked.extend  # type: ignore[method-assign]
    sink.prepare({}, TaskContext("t", "sink", 0, {"sink": (0,)}))
    origin = Origin("source", 1, "default", origin_fields)
    tuples = [Tuple(row, origin, None) for row in rows]
    sink.process(tuples[0])  # one by one, as a subclass's process calls it
    sink.process_batch(tuples[1:])
    sink.end_batch()
    sink.cleanup()
    assert acked == tuples
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_sink_writes_the_fields_picked_in_their_order_whatever_their_names(tmp_path: Path) -> None:
    odd = ("it's", 'say "hi"', "back\\slash", "n")
    rows = [("a", "b", "c", 1), ("d", "e", "f", 2)]
    written = write_lines(tmp_path / "all.jsonl", None, odd, rows)
    assert written == [dict(zip(odd, row, strict=True)) for row in rows]
    picked = write_lines(tmp_path / "picked.jsonl", ("n", "it's"), odd, rows)
    assert picked == [{"n": 1, "it's": "a"}, {"n": 2, "it's": "d"}]
    assert [list(record) for record in picked] == [["n", "it's"]] * 2  # the order asked for


def test_the_sink_fails_what_it_cannot_write_and_writes_the_rest(tmp_path: Path) -> None:
    # A stream lacking a field, and a value JSON cannot encode, in one batch: those tuples
    # fail, one by one; the others are written and acked; the batch's end names the error.
    sink = JsonLinesSink(str(tmp_path / "out.jsonl"), ("word", "count"))
    acked: list[Tuple] = []
    failed: list[Tuple] = []
    sink.ack_all = acked.extend  # type: ignore[method-assign]
    sink.fail = failed.append  # type: ignore[method-assign]
    sink.prepare({}, TaskContext("t", "sink", 0, {"sink": (0,)}))
    good, other = Origin("count", 1, "default", ("word", "count")), Origin("split", 2, "default", ("word", "n"))
    batch = [Tuple(("a", 1), good, None), Tuple(("b", 1), other, None), Tuple(("c", {1}), good, None),
             Tuple(("d", 4), good, None)]
    sink.process_batch(batch)
    with pytest.raises(ValueError, match="2 tuples could not be written to .*out.jsonl \\(failed\\); the last: "
                                         "TypeError: .*set"):
        sink.end_batch()
    sink.cleanup()
    assert (acked, failed) == ([batch[0], batch[3]], [batch[1], batch[2]])
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == \
        [{"word": "a", "count": 1}, {"word": "d", "count": 4}]


def test_with_fsync_a_batch_is_acked_only_after_the_file_is_flushed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    sink = JsonLinesSink(str(tmp_path / "out.jsonl"), fsync=True)
    sink.ack_all = lambda tuples: events.extend("ack" for _ in tuples)  # type: ignore[method-assign]
    sink.prepare({}, TaskContext("t", "sink", 0, {"sink": (0,)}))
    origin = Origin("source", 1, "default", ("n",))
    for n in range(3):
        sink.process(Tuple((n,), origin, None))
    sink.end_batch()
    sink.cleanup()
    assert events == ["fsync", "ack", "ack", "ack"]


def test_a_failed_fsync_fails_the_batch_instead_of_acking_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    sink = JsonLinesSink(str(tmp_path / "out.jsonl"), fsync=True)
    acked: list[Tuple] = []
    failed: list[Tuple] = []
    sink.ack_all = acked.extend  # type: ignore[method-assign]
    sink.fail = failed.append  # type: ignore[method-assign]
    sink.prepare({}, TaskContext("t", "sink", 0, {"sink": (0,)}))
    tup = Tuple((1,), Origin("source", 1, "default", ("n",)), None)
    sink.process(tup)
    with pytest.raises(OSError, match="Input/output error"):
        sink.end_batch()
    sink.cleanup()
    assert (acked, failed) == ([], [tup])
