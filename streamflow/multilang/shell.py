"""What a shell bolt and a shell spout share: one component process per task, its
handshake, its supervision, and the messages every component may send.

The task's process is started in ``prepare``/``open`` (a process that cannot start, or
does not answer the handshake in ``topology.subprocess.timeout.secs``, fails the task
as any component's ``prepare`` that raises). From then on a supervisor task of its own
reads the process's messages and hands them to the bolt or spout, and a watch task
checks once a second that the process still answers: one that sent nothing for
``topology.subprocess.timeout.secs`` while it owed an answer is killed. A process that
exits or is killed is reported as the task's error (``status`` shows it) and started
again after a back-off that doubles from 0.1 s to 10 s (and starts over once a process
lived a minute); the bolt or spout says what becomes of the tuples it held.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import orjson

from streamflow.components import TaskContext
from streamflow.errors import StreamflowError
from streamflow.multilang.process import ComponentProcess, ComponentStartError, resolve_command
from streamflow.multilang.protocol import SERIALIZERS, Message
from streamflow.tuples import DEFAULT_STREAM

if TYPE_CHECKING:
    from streamflow.stats import TaskStats
    from streamflow.topology import Topology

WATCH_EVERY = 1.0
"""Seconds between two checks that the process answers (and a bolt's heartbeat)."""
RESTART_FIRST, RESTART_MAX, RESTART_RESET = 0.1, 10.0, 60.0
"""Back-off of restarts: first delay, longest delay, and the lifetime after which a
process that dies is restarted with the first delay again."""

LOG_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
"""Storm's multilang log levels (trace, debug, info, warn, error) as Python's."""


class ComponentError(StreamflowError):
    """An error a component process reported (its ``error`` command)."""


class ProtocolError(StreamflowError):
    """A message from a component process that the protocol does not allow."""


class ShellComponent(ABC):
    """The process of a shell bolt or spout task: how to start it, and its lifecycle."""

    outputs: Any

    def __init__(self, command: str | Sequence[str], script: str | Sequence[str] | None = None,
                 outputs: Any = (), *, serializer: str | None = None, cwd: str | Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.command = [command] if isinstance(command, str) else list(command)
        if not self.command or not all(isinstance(part, str) and part for part in self.command):
            raise ValueError(f"command must be a non-empty string or list of strings, got {command!r}")
        if script is None or script == "":
            self.script: list[str] = []
        else:
            self.script = [script] if isinstance(script, str) else list(script)
        self.outputs = outputs
        if serializer is not None and serializer not in SERIALIZERS:
            raise ValueError(f"unknown multilang serializer {serializer!r} (known: {', '.join(SERIALIZERS)})")
        self.serializer = serializer
        self.cwd = None if cwd is None else Path(cwd)
        """Working directory of the process; None: the directory of the topology file
        when loaded from one (see :func:`attach_topology`), else this process's."""
        self.env = dict(env) if env is not None else None
        self.topology_context: dict[str, Any] = {}
        """The parts of Storm's handshake context that need the whole topology (inputs
        and targets), set by :func:`attach_topology` when the topology is loaded."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({' '.join(self.command + self.script)!r})"

    # -- lifecycle ---------------------------------------------------------------------

    async def _open_process(self, config: Mapping[str, Any], context: TaskContext) -> None:
        """Start this task's process and its supervision (``prepare``/``open``)."""
        collector: Any = self.emit.__self__
        # The runtime binds emit to the task's collector; the process's messages arrive
        # on a task of their own, whose emits must be flushed by it (acks alone have a
        # flush of their own in the component API).
        self._collector = collector
        self._stats: TaskStats = collector.stats
        self._context = context
        self._log = logging.getLogger(f"streamflow.multilang.{context.component}")
        self._timeout = float(config["topology.subprocess.timeout.secs"])
        self._serializer = self.serializer or _serializer_of(self.script, config)
        self._pid_dir = tempfile.mkdtemp(prefix=f"streamflow-{context.component}-{context.task_id}-")
        conf = _json_safe({**config, "topology.name": context.topology})
        self._handshake = {"pidDir": self._pid_dir, "conf": conf, "context": self._storm_context(context)}
        self._metrics: dict[str, float] = {}
        self._closing = False
        self._up = asyncio.Event()
        self._proc: ComponentProcess | None = None
        self._last_heard = time.monotonic()
        self._born = time.monotonic()
        try:
            await self._launch()
        except BaseException:
            shutil.rmtree(self._pid_dir, ignore_errors=True)
            raise
        where = f"{context.component}[{context.task_id}]"
        self._tasks = [asyncio.create_task(self._supervise(), name=f"{where} process"),
                       asyncio.create_task(self._watch(), name=f"{where} watch")]

    async def _close_process(self) -> None:
        """Stop the process and its supervision (``cleanup``/``close``)."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._proc is not None:
            await self._proc.stop()
        shutil.rmtree(self._pid_dir, ignore_errors=True)

    async def _launch(self) -> None:
        cwd = self.cwd
        argv = [resolve_command(self.command[0], cwd), *self.command[1:], *self.script]
        proc = ComponentProcess(argv, cwd, self.env, self._serializer, self._log)
        await proc.start(self._handshake, self._timeout)
        self._proc = proc
        self._born = self._last_heard = time.monotonic()
        self._started(proc)
        self._up.set()
        self._log.info("component process %d started: %s", proc.pid, " ".join(argv))

    async def _supervise(self) -> None:
        """Read the process's messages; when it ends, report it and start another."""
        delay = RESTART_FIRST
        try:
            while True:
                proc = self._proc
                assert proc is not None
                while (messages := await proc.read()) is not None:
                    self._last_heard = time.monotonic()
                    self._handle(messages)
                    await self._handled()
                code = await proc.wait()
                self._up.clear()
                if self._closing:
                    return
                self._stats.record_error(proc.death(code, self._timeout), "process")
                await self._lost()
                if time.monotonic() - self._born > RESTART_RESET:
                    delay = RESTART_FIRST
                while True:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RESTART_MAX)
                    try:
                        await self._launch()
                        break
                    except ComponentStartError as exc:
                        self._stats.record_error(exc, "restart")
        finally:
            if self._closing is False and self._proc is not None:
                self._proc.kill()  # cancelled without a cleanup: never leave the process behind

    async def _watch(self) -> None:
        """Kill a process that owes an answer and sent nothing for the timeout; let a
        bolt send its heartbeat."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            proc = self._proc
            if proc is None or not self._up.is_set() or not proc.running:
                continue
            if self._owes_answer() and time.monotonic() - self._last_heard > self._timeout:
                proc.hung = True
                proc.kill()
                continue
            self._tick_watch()

    # -- messages every component may send ---------------------------------------------

    def _common(self, message: Message, command: Any) -> None:
        """``log``, ``error`` and ``metrics``; anything else is a protocol error."""
        if command == "log":
            level = message.get("level", 2)
            self._log.log(LOG_LEVELS.get(level, logging.INFO) if isinstance(level, int) else logging.INFO,
                          "%s", message.get("msg", ""))
        elif command == "error":
            text = str(message.get("msg", ""))
            lines = [line for line in text.splitlines() if line.strip()]
            summary = lines[-1].strip() if lines else "(no message)"
            self._stats.record_error(ComponentError(f"process {self._proc.pid if self._proc else '?'} "
                                                    f"reported: {summary}"), "process")
            self._log.debug("component process reported an error:\n%s", text)
        elif command == "metrics":
            name, value = message.get("name"), message.get("params")
            if not isinstance(name, str) or not name:
                raise ProtocolError("metrics without a name")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._metrics[name] = self._metrics.get(name, 0) + value
            else:
                raise ProtocolError(f"metrics {name!r}: params must be a number to add, got {value!r}")
        else:
            raise ProtocolError(f"unknown command {command!r}")

    def metrics(self) -> Mapping[str, float]:
        """The sums of the numbers the process sent with ``metrics`` commands, by name
        (Storm's ``CountShellMetric``)."""
        return dict(getattr(self, "_metrics", {}))

    def _protocol_error(self, exc: Exception, command: Any) -> None:
        self._stats.record_error(exc, f"multilang {command}")

    def _emit_as_asked(self, message: Message, values: list[Any], stream: str, tag: Any) -> None:
        """Emit as an ``emit`` command asks: to its direct task, or routed, answering the
        task ids it went to unless ``need_task_ids`` is false. ``tag``: a bolt's anchors,
        a spout's message id."""
        task = message.get("task")
        if task:
            self.emit_direct(task, values, stream, tag)
        elif message.get("need_task_ids", True) is False:
            self.emit(values, stream, tag)
        else:
            tasks = emitted_to(self._collector, stream, lambda: self.emit(values, stream, tag))
            if self._proc is not None:
                self._proc.write(self._proc.codec.encode(tasks))

    def _storm_context(self, context: TaskContext) -> dict[str, Any]:
        """The ``context`` of Storm's handshake (``TopologyContext.toJSONString``)."""
        outputs = _normalized_outputs(self.outputs)
        return {
            "task->component": {str(task): component for component, tasks in context.component_tasks.items()
                                for task in tasks},
            "taskid": context.task_id,
            "componentid": context.component,
            "streams": list(outputs),
            "stream->outputfields": outputs,
            "stream->target->grouping": {},
            "source->stream->grouping": {},
            "source->stream->fields": {},
            **self.topology_context,
        }

    # -- what the bolt and the spout fill in -------------------------------------------

    @abstractmethod
    def _started(self, proc: ComponentProcess) -> None:
        """A process has completed its handshake (before it is used)."""

    @abstractmethod
    def _handle(self, messages: list[Message]) -> None:
        """The messages a process wrote, in order: the bolt's or the spout's own."""

    async def _handled(self) -> None:  # noqa: B027 - a hook only the bolt needs
        """After a batch of messages was handled."""

    @abstractmethod
    async def _lost(self) -> None:
        """The process ended (it was reported): settle what it held."""

    def _owes_answer(self) -> bool:
        return True

    def _tick_watch(self) -> None:  # noqa: B027 - a hook only the bolt needs
        """Once a second while the process is up."""

    emit: Any
    emit_direct: Any


def attach_topology(topology: Topology) -> None:
    """Give each shell component of ``topology`` the handshake context parts that need
    the whole topology (Storm's ``stream->target->grouping``, ``source->stream->grouping``
    and ``source->stream->fields``; pystorm names the fields of input tuples with the
    last), and the directory its commands run in when it has none: ``default_cwd``."""
    for spec in topology.components.values():
        if not isinstance(spec.component, ShellComponent):
            continue
        sources: dict[str, dict[str, Any]] = {}
        fields: dict[str, dict[str, list[str]]] = {}
        for sub in spec.inputs:
            sources.setdefault(sub.source, {})[sub.stream] = _grouping(sub.grouping, sub.fields)
            source_fields = topology.components[sub.source].outputs[sub.stream]
            fields.setdefault(sub.source, {})[sub.stream] = list(source_fields)
        targets: dict[str, dict[str, Any]] = {}
        for stream in spec.outputs:
            for target, sub in topology.subscribers(spec.name, stream):
                targets.setdefault(stream, {})[target.name] = _grouping(sub.grouping, sub.fields)
        spec.component.topology_context = {
            "stream->target->grouping": targets, "source->stream->grouping": sources,
            "source->stream->fields": fields,
        }


def default_cwd(topology: Topology, directory: Path) -> None:
    """Run the commands of shell components that name no directory in ``directory``."""
    for spec in topology.components.values():
        if isinstance(spec.component, ShellComponent) and spec.component.cwd is None:
            spec.component.cwd = directory


def emitted_to(collector: Any, stream: str, emit: Any) -> list[int]:
    """Run ``emit`` and return the tasks it sent the tuple to (multilang answers an emit
    with them, unless it says ``need_task_ids: false``): the targets whose batches on
    ``stream`` grew. Reads the collector's batches; only such emits pay for it."""
    out = collector._streams.get(stream)
    if out is None:
        emit()  # raises: an undeclared stream
        return []
    before = {task: len(batch[0]) for task, batch in out.batches.items()}
    emit()
    return [task for task, batch in out.batches.items() if len(batch[0]) > before.get(task, 0)]


def _grouping(name: str, fields: Sequence[str]) -> dict[str, Any]:
    """A grouping as Storm's context gives it: ``{"type": "FIELDS", "fields": [...]}``."""
    if name == "global":
        return {"type": "FIELDS", "fields": []}
    if name in ("fields", "partial_key"):
        return {"type": name.upper(), "fields": list(fields)}
    return {"type": name.upper()}


def _normalized_outputs(declared: Any) -> dict[str, list[str]]:
    if isinstance(declared, Mapping):
        return {stream: list(fields) for stream, fields in declared.items()}
    return {DEFAULT_STREAM: list(declared or ())}


def _serializer_of(script: Sequence[str], config: Mapping[str, Any]) -> str:
    """The serializer a component asks for on its command line (``streamparse_run -s
    msgpack module.Class``), else the topology's ``topology.multilang.serializer``."""
    words = [word for part in script for word in part.split()]
    for i, word in enumerate(words):
        if word in ("-s", "--serializer") and i + 1 < len(words) and words[i + 1] in SERIALIZERS:
            return words[i + 1]
        if word.startswith("--serializer=") and word.partition("=")[2] in SERIALIZERS:
            return word.partition("=")[2]
    configured = str(config.get("topology.multilang.serializer") or "")
    return "msgpack" if "msgpack" in configured.lower() else "json"


def _json_safe(value: Mapping[str, Any]) -> Any:
    """Config as JSON data: what JSON cannot hold is given as its text."""
    return orjson.loads(orjson.dumps(dict(value), default=str, option=orjson.OPT_NON_STR_KEYS))
