"""The log pump with a real worker-like child writing to a pipe."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from streamflow.logpump import LogPump, rotated

WRITER = """
import sys
for n in range({lines}):
    print(f"line {{n:06d}} " + "x" * 90, file=sys.stderr if n % 2 else sys.stdout, flush=True)
"""


def pump_child(path: Path, lines: int, max_bytes: int, echo: io.BytesIO | None = None) -> None:
    child = subprocess.Popen([sys.executable, "-c", WRITER.format(lines=lines)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert child.stdout is not None
    pump = LogPump(child.stdout, path, max_bytes, echo).start()
    assert child.wait(timeout=60) == 0
    pump.join(timeout=60)


def numbers(*paths: Path) -> list[int]:
    return [int(line.split()[1]) for path in paths for line in path.read_text().splitlines()]


def test_a_log_is_rotated_by_size_while_its_writer_runs_and_keeps_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    pump_child(log, lines=3000, max_bytes=100_000)  # about 300 kB written
    assert rotated(log).exists()
    assert rotated(log).stat().st_size < 100_000 + 64 * 1024  # rotated within one read of the limit
    kept = numbers(rotated(log), log)
    assert kept == list(range(kept[0], 3000))  # the newest lines, in order, none torn
    assert all(line.startswith("line ") for line in log.read_text().splitlines())


def test_every_line_is_echoed_and_a_log_below_the_limit_is_not_rotated(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    echo = io.BytesIO()
    pump_child(log, lines=200, max_bytes=10_000_000, echo=echo)
    assert not rotated(log).exists()
    assert numbers(log) == list(range(200))
    assert echo.getvalue() == log.read_bytes()


def test_output_without_a_final_newline_is_kept(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.write('a\\nno newline')"],
                             stdout=subprocess.PIPE)
    assert child.stdout is not None
    pump = LogPump(child.stdout, log).start()
    child.wait(timeout=60)
    pump.join(timeout=60)
    assert log.read_text() == "a\nno newline\n"


def test_a_pump_with_no_room_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        LogPump(io.BytesIO(), tmp_path / "w.log", 0)
