"""Children that run user code under limits: address space, CPU time, wall time.

Nimbus loads each submitted topology in a child to describe it, and a supervisor starts
each worker: both run code nimbus and the supervisor do not trust to behave. The limits
are set by the child itself before it runs anything else (``python -m streamflow.sandbox
--memory-mb N --cpu-secs S -- COMMAND...`` sets them, then ``exec``s COMMAND, which
keeps them and the pid), so the parent needs no ``preexec_fn``, which is unsafe in a
process with threads. Both soft and hard limits are set: user code cannot raise them.

:func:`run_limited` also gives the child a clean environment (no credential of the
parent leaks into user code through ``os.environ``) and its own process group, which a
timeout kills whole, grandchildren included.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

KEPT_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "TZ")
"""What a child run by :func:`run_limited` keeps of its parent's environment."""


@dataclass(frozen=True)
class Limits:
    """What a child may use: ``None`` leaves a limit as the parent has it."""

    memory_mb: int | None = None
    cpu_secs: int | None = None

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` wrapped so that it starts under these limits."""
        wrapper = [sys.executable, "-m", "streamflow.sandbox"]
        if self.memory_mb is not None:
            wrapper += ["--memory-mb", str(self.memory_mb)]
        if self.cpu_secs is not None:
            wrapper += ["--cpu-secs", str(self.cpu_secs)]
        return [*wrapper, "--", *command]


class Timeout(Exception):
    """The child ran past its wall-clock limit; its process group was killed."""


def run_limited(command: Sequence[str], limits: Limits, timeout: float, cwd: Path,
                environment: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` under ``limits`` with a clean environment (:data:`KEPT_ENVIRONMENT`
    and ``environment``), its own process group and ``HOME`` at ``cwd``; capture its
    output. Raises :class:`Timeout` after killing the group when it runs past ``timeout``."""
    env = {key: os.environ[key] for key in KEPT_ENVIRONMENT if key in os.environ}
    env.update(environment or {}, HOME=str(cwd))
    child = subprocess.Popen(limits.argv(command), cwd=cwd, env=env, text=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise Timeout(f"ran past {timeout:g} s") from None
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # what it started and left behind
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def _limit(kind: int, value: int) -> None:
    resource.setrlimit(kind, (value, value))


def main(argv: Sequence[str] | None = None) -> None:
    """Set the limits given, then ``exec`` the command after ``--``."""
    parser = argparse.ArgumentParser(prog="python -m streamflow.sandbox")
    parser.add_argument("--memory-mb", type=int, help="address space limit (RLIMIT_AS), MiB")
    parser.add_argument("--cpu-secs", type=int, help="CPU time limit (RLIMIT_CPU), seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    if args.memory_mb is not None:
        _limit(resource.RLIMIT_AS, args.memory_mb * 1024 * 1024)
    if args.cpu_secs is not None:
        _limit(resource.RLIMIT_CPU, args.cpu_secs)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
