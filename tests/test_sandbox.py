"""Children under limits, with real processes: memory, CPU, wall time, environment."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil
import pytest
from cluster import wait_for

from streamflow.sandbox import Limits, Timeout, run_limited


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_child_over_its_memory_limit_fails_to_allocate(tmp_path: Path) -> None:
    result = run_limited(python("b = bytearray(1024 * 1024 * 1024)"), Limits(memory_mb=512), 60, tmp_path)
    assert result.returncode != 0 and "MemoryError" in result.stderr
    fine = run_limited(python("b = bytearray(64 * 1024 * 1024); print(len(b))"), Limits(memory_mb=512), 60,
                       tmp_path)
    assert (fine.returncode, fine.stdout.strip()) == (0, str(64 * 1024 * 1024))


def test_a_child_spinning_past_its_cpu_limit_is_stopped_by_the_kernel(tmp_path: Path) -> None:
    result = run_limited(python("while True: pass"), Limits(cpu_secs=1), 60, tmp_path)
    assert result.returncode in (-signal.SIGXCPU, -signal.SIGKILL)  # at the soft limit, or the hard one


def test_a_child_cannot_raise_its_own_limits(tmp_path: Path) -> None:
    code = ("import resource\n"
            "try:\n    resource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n"
            "except ValueError as exc:\n    print('refused', exc)\n")
    result = run_limited(python(code), Limits(memory_mb=512), 60, tmp_path)
    assert result.stdout.startswith("refused"), result


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(600)\n")
    with pytest.raises(Timeout, match="ran past 3 s"):
        run_limited(python(code), Limits(), 3, tmp_path)
    grandchild = int(pid_file.read_text())
    def gone() -> bool:
        return not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE

    wait_for(gone, 10, "the grandchild to die with the timeout")


def test_the_parents_environment_does_not_reach_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMFLOW_ZK_AUTH", "user:secret")
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    result = run_limited(python(code), Limits(), 60, tmp_path, {"GIVEN": "yes"})
    assert "user:secret" not in result.stdout
    assert '"GIVEN": "yes"' in result.stdout and f'"HOME": "{tmp_path}"' in result.stdout


def test_the_limited_command_keeps_the_pid_it_was_started_with(tmp_path: Path) -> None:
    import subprocess

    child = subprocess.Popen(Limits(memory_mb=1024).argv(python("import os; print(os.getpid())")),
                             stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=60)
    assert int(out) == child.pid


def test_a_missing_command_is_one_line_of_usage() -> None:
    import subprocess

    result = subprocess.run([sys.executable, "-m", "streamflow.sandbox", "--memory-mb", "10"],
                            capture_output=True, text=True, timeout=60, env={**os.environ})
    assert result.returncode == 2 and "no command given" in result.stderr
