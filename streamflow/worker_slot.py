"""One slot's worker process, as its supervisor runs it: start, reap, back off, stop.

As Dask's nanny does for its worker, a :class:`WorkerSlot` owns the OS process of one
worker and the decisions about it: how it starts (:class:`Launch`: under a memory cap,
its secrets on stdin, its output pumped to a log file rotated by size); when it may
start again after it died (at once if it had run a while; after a growing back-off if it
keeps dying young, as when its code cannot load), and how it is stopped (SIGTERM, then
SIGKILL after a grace period). The :func:`stop_all` stops many at once, and
:func:`workers_of` finds the worker processes a killed supervisor left behind, by their
command lines.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from streamflow.backoff import Backoff
from streamflow.errors import StreamflowError
from streamflow.logpump import DEFAULT_MAX_BYTES, LogPump
from streamflow.sandbox import Limits
from streamflow.transport.tls import contexts
from streamflow.worker_command import TlsFiles, WorkerCommand, WorkerSecrets

log = logging.getLogger(__name__)

STOP_GRACE_SECS = 5.0
"""How long a worker has to exit after SIGTERM before it is killed."""
YOUNG_SECS = 10.0
"""A worker that dies younger than this is restarted only after a back-off."""
RESTART_BACKOFF = Backoff(initial=1.0, multiplier=2.0, maximum=30.0)
"""The delays before starting again a slot whose worker keeps failing: 1, 2, 4 ... 30 s."""
ORPHAN_POLL_SECS = 0.05
PUMP_DRAIN_SECS = 2.0
"""How long a reaped worker's log pump may take to write what the worker left in its
pipe (longer only if a child of the worker still holds the pipe open)."""
SECRET_VARIABLES = ("STREAMFLOW_ZK_AUTH", "STREAMFLOW_TOKEN")
"""Environment variables of the supervisor that its workers do not inherit: user code
reads ``os.environ``. The worker gets what it needs of them on stdin."""


@dataclass(frozen=True)
class Launch:
    """How a supervisor starts each worker, from its options: what the worker's stdin
    carries, its address-space cap in MiB (None: none), its log file's size before
    rotation, whether its lines also go to the supervisor's stdout, and what its command
    line adds."""

    secrets: WorkerSecrets = WorkerSecrets()
    memory_mb: int | None = None
    log_max_bytes: int = DEFAULT_MAX_BYTES
    echo: bool = False
    tls: TlsFiles | None = None
    metrics_open: bool = False

    def argv(self, command: WorkerCommand) -> list[str]:
        """The worker's command line, under the memory cap if there is one."""
        argv = command.to_argv()
        return argv if self.memory_mb is None else Limits(memory_mb=self.memory_mb).argv(argv)


def tls_files(cert: str | None, key: str | None, ca: str | None) -> TlsFiles | None:
    """The files of the workers' TLS links (``--tls-cert``, ``--tls-key``, ``--tls-ca``),
    made absolute (a worker starts in its code directory) and checked now, so that a
    missing or wrong one is one line at start, not every worker failing; None when none
    is given. Raises :class:`StreamflowError`."""
    if not any((cert, key, ca)):
        return None
    if not (cert and key and ca):
        raise StreamflowError("give --tls-cert, --tls-key and --tls-ca together, or none of them")
    files = TlsFiles(*(str(Path(file).resolve()) for file in (cert, key, ca)))
    contexts(*files)
    return files


class WorkerSlot:
    """The worker process of one slot, for one topology and one set of its tasks."""

    def __init__(self, topology: str, tasks: tuple[int, ...]) -> None:
        self.topology = topology
        self.tasks = tasks
        self.process: subprocess.Popen[bytes] | None = None
        self.pump: LogPump | None = None
        self.virtualenv: Path | None = None
        self.started = 0.0
        self.failures = 0
        self.next_start = 0.0

    def due(self, now: float) -> bool:
        """Whether no worker runs here and its back-off, if any, is over."""
        return self.process is None and now >= self.next_start

    def reap(self, now: float) -> tuple[int, float, float] | None:
        """If the worker exited: forget it and return its exit code, how long it lived
        and the delay before it starts again; else None."""
        if self.process is None or self.process.poll() is None:
            return None
        code, lived = self.process.returncode, now - self.started
        self.process = None
        self.drain()
        if lived < YOUNG_SECS:
            return code, lived, self.failed(now)
        self.failures, self.next_start = 0, now
        return code, lived, 0.0

    def failed(self, now: float) -> float:
        """Count one more failure of the slot and put off its next start; returns the delay."""
        self.failures += 1
        delay = RESTART_BACKOFF.delay(self.failures)
        self.next_start = now + delay
        return delay

    def start(self, command: WorkerCommand, launch: Launch, env: Mapping[str, str], log_path: Path,
              virtualenv: Path | None) -> int:
        """Start the worker in its code directory as ``launch`` says, with ``env`` less
        :data:`SECRET_VARIABLES`, its output pumped to ``log_path``; returns its pid."""
        env = {key: value for key, value in env.items() if key not in SECRET_VARIABLES}
        process = subprocess.Popen(launch.argv(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=env, cwd=command.code_dir)
        assert process.stdin is not None and process.stdout is not None
        self.process, self.started, self.virtualenv = process, time.monotonic(), virtualenv
        echo = sys.stdout.buffer if launch.echo else None
        self.pump = LogPump(process.stdout, log_path, launch.log_max_bytes, echo).start()
        try:  # one short line: the pipe's buffer takes it whole, whenever the worker reads it
            process.stdin.write(launch.secrets.encode())
            process.stdin.close()
        except BrokenPipeError:  # it died at once: reaped as any worker dying young
            pass
        return process.pid

    def drain(self) -> None:
        """Let the pump of the worker that exited write what is left in its pipe, so that
        the next worker's pump does not append to the file beside it."""
        if self.pump is not None:
            self.pump.join(PUMP_DRAIN_SECS)
            self.pump = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def stop_all(slots: Mapping[int, WorkerSlot]) -> None:
    """SIGTERM the running workers of ``slots``, then wait for them together: one that
    has not exited :data:`STOP_GRACE_SECS` after the signal is killed (one at a time, a
    rebalance that moves four slots would wait up to four times as long)."""
    running = {port: slot for port, slot in slots.items() if slot.running}
    for slot in running.values():
        assert slot.process is not None
        slot.process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECS
    for port, slot in running.items():
        assert slot.process is not None
        try:
            slot.process.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            slot.process.kill()
            slot.process.wait()
        slot.drain()
        log.info("stopped the worker on port %d (%s)", port, slot.topology)


def check_ports_free(host: str, ports: Iterable[int]) -> None:
    """Raise :class:`StreamflowError` in one line if a slot's port cannot be bound on
    ``host`` as a worker binds it (``SO_REUSEADDR``: a port in TIME_WAIT is free): another
    process holds it, and every worker started there would fail at once, for ever."""
    for port in ports:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise StreamflowError(f"worker port {port} on {host} is taken ({exc.strerror}): give this "
                                      "supervisor another --base-port (STREAMFLOW_BASE_PORT)") from None


def workers_of(supervisor: str, ports: Iterable[int]) -> list[int]:
    """The pids of the running worker processes of ``supervisor``'s slots, by their
    command lines (:class:`WorkerCommand`), from /proc: none where there is no /proc."""
    wanted = set(ports)
    pids = []
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile
            continue
        command = WorkerCommand.from_argv(argv)
        if command is not None and command.supervisor == supervisor and command.port in wanted:
            pids.append(int(entry.name))
    return pids


def stop_pids(pids: list[int]) -> None:
    """SIGTERM the processes ``pids`` (not children of this one), and SIGKILL those still
    there after :data:`STOP_GRACE_SECS`."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECS
    while (left := [pid for pid in pids if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(ORPHAN_POLL_SECS)
    for pid in left:
        _signal(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs: not gone, and not a zombie that nobody reaped yet (an
    orphan's new parent may not reap it at once)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
