"""The ``streamflow`` command as tests run it: as a user would, in a child process, with
what it prints kept for the assertions."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository: commands run there, so topology paths are relative to it."""


def streamflow(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``streamflow ARGS`` to its end (at most ``timeout`` seconds)."""
    return subprocess.run([sys.executable, "-m", "streamflow.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A refusal as the CLI must give one: exit code 2, one line holding every ``needle``,
    no traceback. Returns the line."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def summary_rows(stderr: str) -> dict[str, list[str]]:
    """The per-component table ``streamflow local`` prints: component -> its cells (from
    its last header: log lines of a component start with "component" too)."""
    lines = stderr.splitlines()
    start = max(i for i, line in enumerate(lines) if line.split()[:2] == ["component", "kind"])
    rows = {}
    for line in lines[start + 1:]:
        cells = line.split()
        if len(cells) < 8:
            break
        rows[cells[0]] = cells
    return rows


def zipped(entries: dict[str, bytes]) -> bytes:
    """A code package (or a hostile one) holding ``entries``, as ``submit`` would send it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()
