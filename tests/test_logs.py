"""Worker log lines: their JSON form, the task context they pick up, and reading a log
file back in pieces as a follower does."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from pathlib import Path

from streamflow.logs import TASK, JsonFormatter, format_line, read_new_lines


def test_lines_carry_the_fixed_fields_and_the_task_of_the_asyncio_task_that_logs() -> None:
    formatter = JsonFormatter({"topology": "wc-1", "worker": "sup-6700"})
    seen: list[dict[str, object]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(json.loads(formatter.format(record)))

    logger = logging.getLogger("test-logs")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    logger.propagate = False

    async def task_body() -> None:
        logger.info("in a task")

    async def main() -> None:
        context = contextvars.copy_context()
        context.run(TASK.set, ("split", 4))
        await asyncio.create_task(task_body(), context=context)
        logger.info("outside")

    asyncio.run(main())
    try:
        raise ValueError("bad")
    except ValueError:
        logger.exception("with a traceback")
    assert seen[0]["component"] == "split" and seen[0]["task"] == 4
    assert seen[0]["topology"] == "wc-1" and seen[0]["worker"] == "sup-6700" and seen[0]["level"] == "INFO"
    assert "component" not in seen[1]
    assert "ValueError: bad" in str(seen[2]["exception"])
    assert "split[4] sup-6700: in a task" in format_line(seen[0])


def test_a_follower_reads_each_whole_line_once_and_restarts_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    assert read_new_lines(path, None) == ([], 0)
    path.write_text('{"time": 1.0, "level": "INFO", "message": "one"}\nTraceback (most recent call last):\n'
                    '{"time": 2.0, "level": "INFO", "mess')
    lines, offset = read_new_lines(path, None)
    assert [line["message"] for line in lines] == ["one", "Traceback (most recent call last):"]
    assert lines[1]["level"] == "RAW"  # not ours: kept, as text
    with open(path, "a") as f:
        f.write('age": "two"}\n')
    lines, offset = read_new_lines(path, offset)
    assert [line["message"] for line in lines] == ["two"]
    assert read_new_lines(path, offset) == ([], offset)
    path.write_text('{"time": 3.0, "message": "after rotation"}\n')  # shorter than the offset
    lines, _ = read_new_lines(path, offset)
    assert [line["message"] for line in lines] == ["after rotation"]


def test_a_first_read_starts_at_a_whole_line_near_the_end(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    total = 20000  # ~0.8 MB, beyond the tail a first read shows
    path.write_text("".join(json.dumps({"time": i, "message": f"line {i}"}) + "\n" for i in range(total)))
    lines, offset = read_new_lines(path, None)
    assert offset == path.stat().st_size
    assert 0 < len(lines) < total
    assert [line["message"] for line in lines] == [f"line {i}" for i in range(total - len(lines), total)]

