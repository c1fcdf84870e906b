"""One component process: started, spoken to over its stdin and stdout, watched, stopped.

Storm's ``ShellProcess``, on the worker's event loop: the process is started in a session
of its own (Ctrl-C in a terminal reaches streamflow, which stops it, and not the process
itself, which would print a traceback), with the kernel told to kill it should the
worker die without stopping it (``PR_SET_PDEATHSIG``), so no component process outlives
its worker. Its stderr goes to the worker's log line by line, and what it prints on
stdout that is not protocol is logged as its output.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import sys
from collections import deque
from pathlib import Path
from typing import Any, Mapping, Sequence

from streamflow.errors import StreamflowError
from streamflow.multilang.protocol import Codec, Message, codec

READ_CHUNK = 1 << 16
STOP_GRACE = 2.0
"""Seconds a process has to exit after SIGTERM before it is killed."""
STDERR_KEPT = 5
"""Last lines of stderr kept, to say why a process died."""
TOPOLOGY_VIRTUALENV = "STREAMFLOW_TOPOLOGY_VIRTUALENV"
"""Environment variable in which a supervisor gives a worker the virtualenv it built for
its topology (:mod:`streamflow.multilang.virtualenvs`)."""


class ComponentStartError(StreamflowError):
    """A component process could not be started or did not complete the handshake."""


class ComponentDied(StreamflowError):
    """A component process exited, was killed, or stopped answering."""


def topology_virtualenv() -> Path | None:
    """The virtualenv of this worker's topology, if its supervisor built it one."""
    directory = os.environ.get(TOPOLOGY_VIRTUALENV)
    return Path(directory) if directory else None


def resolve_command(command: str, cwd: Path | None) -> str:
    """The executable to run for ``command``: a path as it is (relative to ``cwd``), a
    bare name from the bin/ of the topology's virtualenv (:func:`topology_virtualenv`),
    else from PATH, else from beside the running interpreter (the bin/ of streamflow's
    virtual environment, where ``pip install streamparse`` puts ``streamparse_run``)."""
    if os.sep in command:
        path = Path(command)
        return str(path if path.is_absolute() or cwd is None else cwd / path)
    venv = topology_virtualenv()
    if venv is not None and (venv / "bin" / command).is_file() and os.access(venv / "bin" / command, os.X_OK):
        return str(venv / "bin" / command)
    found = shutil.which(command)
    if found:
        return found
    beside = Path(sys.executable).parent / command
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise ComponentStartError(f"command {command!r} not found on PATH nor beside {sys.executable}")


def component_environment(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """The environment of a component process: ``env`` over this process's (None: this
    process's as it is), as in the activated virtualenv of the topology if it has one
    (its bin/ first on PATH, ``VIRTUAL_ENV`` set), for what the component runs in turn."""
    venv = topology_virtualenv()
    if venv is None:
        return None if env is None else {**os.environ, **env}
    merged = {**os.environ, **(env or {})}
    merged["PATH"] = os.pathsep.join([str(venv / "bin"), merged.get("PATH", os.defpath)])
    merged["VIRTUAL_ENV"] = str(venv)
    return merged


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Have the kernel kill this child when the thread that started it exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ComponentProcess:
    """A started component process: write framed messages, read decoded ones."""

    def __init__(self, argv: Sequence[str], cwd: Path | None, env: Mapping[str, str] | None,
                 serializer: str, log: logging.Logger) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.env = env
        self.codec: Codec = codec(serializer)
        self.log = log
        self.pid = 0
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_KEPT)
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._messages: deque[Message] = deque()
        self.hung = False
        """True once the host killed the process for not answering."""

    async def start(self, handshake: Mapping[str, Any], timeout: float) -> int:
        """Start the process, send the handshake and wait for its pid (at most ``timeout``
        seconds). Raises :class:`ComponentStartError`; the process is gone then."""
        env = component_environment(self.env)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=self.cwd, env=env, start_new_session=True,
                preexec_fn=_die_with_parent, limit=READ_CHUNK)
        except OSError as exc:
            raise ComponentStartError(f"cannot start {' '.join(self.argv)}: {exc.strerror or exc}") from None
        self.pid = self._proc.pid
        assert self._proc.stdin is not None and self._proc.stderr is not None
        self._stdin = self._proc.stdin
        self._stderr_task = asyncio.create_task(self._read_stderr(self._proc.stderr))
        try:
            self.write(self.codec.encode(dict(handshake)))
            answer = await asyncio.wait_for(self._handshake_answer(), timeout)
        except asyncio.TimeoutError:
            await self.stop()
            raise ComponentStartError(f"{' '.join(self.argv)}: no answer to the handshake in {timeout:g} s"
                                      f"{self._stderr_said()}") from None
        except ComponentDied as exc:
            await self.stop()
            raise ComponentStartError(f"{' '.join(self.argv)}: {exc}") from None
        except BaseException:
            await self.stop()
            raise
        pid = answer.get("pid")
        if isinstance(pid, int):
            self.pid = pid
        return self.pid

    async def _handshake_answer(self) -> Message:
        while True:
            batch = await self.read()
            if batch is None:
                code = await self.wait()
                raise ComponentDied(f"exited before the handshake ({describe_exit(code)}){self._stderr_said()}")
            for message in batch:
                if "pid" in message:
                    self._messages.extend(batch[batch.index(message) + 1:])
                    return message
                self.log.warning("message before the handshake's answer ignored: %.200r", message)

    async def read(self) -> list[Message] | None:
        """The next messages from the process (output lines among them are logged), or
        None once its stdout has closed."""
        if self._messages:
            batch = list(self._messages)
            self._messages.clear()
            return batch
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        while True:
            try:
                data = await stdout.read(READ_CHUNK)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                for line in self.codec.rest():
                    self._output(line)
                return None
            messages, output = self.codec.feed(data)
            for line in output:
                self._output(line)
            if messages:
                return messages

    def write(self, data: bytes) -> None:
        """Queue bytes for the process's stdin (never blocks; see :meth:`drain`)."""
        stdin = self._stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(data)

    async def drain(self) -> None:
        """Wait while more than the pipe's share of written bytes is still queued here."""
        stdin = self._stdin
        if stdin is not None and not stdin.is_closing():
            try:
                await stdin.drain()
            except (ConnectionError, OSError):
                pass  # the process is gone: its reader sees the end of its stdout

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def kill(self) -> None:
        """Kill the process at once (it hung, or the host is stopping it)."""
        if self.running:
            assert self._proc is not None
            try:
                self._proc.kill()
            except ProcessLookupError:
                pass

    async def wait(self) -> int | None:
        """Wait for the process to exit (killing it if its stdout closed but it lives
        on); its exit code, negative for a signal."""
        if self._proc is None:
            return None
        try:
            code = await asyncio.wait_for(self._proc.wait(), STOP_GRACE)
        except asyncio.TimeoutError:
            self.kill()
            code = await self._proc.wait()
        if self._stderr_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._stderr_task.cancel()
        return code

    async def stop(self) -> None:
        """Close its stdin and end it: SIGTERM, then SIGKILL after :data:`STOP_GRACE`.
        Safe to call more than once, and under cancellation (the process is killed)."""
        proc = self._proc
        if proc is None:
            return
        if self._stdin is not None:
            self._stdin.close()
        if proc.returncode is None:
            try:
                proc.terminate()
            except ProcessLookupError:
                pass
        try:
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except asyncio.TimeoutError:
                self.kill()
                await proc.wait()
        except BaseException:
            self.kill()  # cancelled while stopping: the kernel reaps it with SIGKILL
            raise
        finally:
            if self._stderr_task is not None:
                self._stderr_task.cancel()

    async def _read_stderr(self, stderr: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stderr.readline()
            except ValueError:  # a line longer than the buffer: take it in pieces
                line = await stderr.read(READ_CHUNK)
            except (ConnectionError, OSError):
                return
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if text.strip():
                self.stderr_tail.append(text)
                self.log.warning("stderr of pid %d: %s", self.pid, text)

    def _output(self, line: str) -> None:
        if line.strip():
            self.log.info("output of pid %d: %s", self.pid, line)

    def _stderr_said(self) -> str:
        """Its last line of stderr that says something (a traceback's last line)."""
        said = [line.strip() for line in self.stderr_tail if any(c.isalnum() for c in line)]
        return f"; its stderr ended with: {said[-1]}" if said else ""

    def death(self, code: int | None, timeout: float | None = None) -> ComponentDied:
        """The error to report for a process that ended with ``code``."""
        if self.hung and timeout is not None:
            what = f"sent nothing for {timeout:g} s (topology.subprocess.timeout.secs): killed"
        else:
            what = describe_exit(code)
        return ComponentDied(f"component process {self.pid} ({' '.join(self.argv)}) {what}{self._stderr_said()}")


def describe_exit(code: int | None) -> str:
    if code is None:
        return "ended"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"
