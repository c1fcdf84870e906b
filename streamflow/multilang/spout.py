"""ShellSpout: a spout run by a process in any language, over Storm's multilang protocol
(Storm's ``ShellSpout``).

The protocol drives a spout with commands, each answered by ``sync``: ``next`` (emit
what you have), ``ack`` and ``fail`` (a tuple tree ended), ``activate`` and
``deactivate``. ``next_tuple`` sends ``next`` and waits for its sync, handing the emits
that come before it to the task's collector; ``ack`` and ``fail`` are written without
waiting (their syncs are counted off as they come). A spout whose ``next`` emitted
nothing is called again only after the executor's idle wait (0.1 ms doubling to 5 ms),
so a spout with nothing to emit does not spin.

A process that sent nothing for ``topology.subprocess.timeout.secs`` while it owed a
sync is killed. When the process dies its death is the task's error and a new one is
started after a back-off; the trees of tuples it emitted end as usual, but their acks
and fails are not sent to the new process, which never emitted them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Mapping

from streamflow.components import AsyncSpout, TaskContext
from streamflow.multilang.process import ComponentProcess
from streamflow.multilang.protocol import Message
from streamflow.multilang.shell import ProtocolError, ShellComponent, emitted_to
from streamflow.tuples import DEFAULT_STREAM


class ShellSpout(ShellComponent, AsyncSpout):
    """A spout run by ``command`` (with ``script`` as its argument) that speaks Storm's
    multilang protocol, one process per task.

    >>> builder.set_spout("sentences", ShellSpout("node", "randomsentence.js", outputs=["sentence"]))

    The arguments are :class:`~streamflow.multilang.ShellBolt`'s.
    """

    async def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self._syncs: deque[asyncio.Future[None] | None] = deque()
        """One entry per command sent and not yet answered by a sync: the future
        ``next_tuple`` waits on, or None for a command nobody waits for."""
        self._live: set[Any] = set()
        """Message ids the current process emitted, not yet acked or failed."""
        self._next = b""
        self._active = True
        await self._open_process(config, context)

    async def next_tuple(self) -> None:
        if not self._up.is_set():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._send(self._next, waiter)
        await waiter

    def ack(self, msg_id: Any) -> None:
        self._answer("ack", msg_id)

    def fail(self, msg_id: Any) -> None:
        self._answer("fail", msg_id)

    def activate(self) -> None:
        self._active = True
        if self._up.is_set():
            self._send(self._codec.encode({"command": "activate"}), None)

    def deactivate(self) -> None:
        self._active = False
        if self._up.is_set():
            self._send(self._codec.encode({"command": "deactivate"}), None)

    async def close(self) -> None:
        await self._close_process()

    # -- the process's side ------------------------------------------------------------

    def _answer(self, command: str, msg_id: Any) -> None:
        key = _hashable(msg_id)
        if key not in self._live:
            return  # emitted by a process that has died since
        self._live.discard(key)
        self._send(self._codec.encode({"command": command, "id": msg_id}), None)

    def _send(self, data: bytes, waiter: asyncio.Future[None] | None) -> None:
        proc = self._proc
        assert proc is not None
        if not self._syncs:
            self._last_heard = time.monotonic()  # the answer is owed from now
        self._syncs.append(waiter)
        proc.write(data)

    def _started(self, proc: ComponentProcess) -> None:
        self._codec = proc.codec
        self._next = proc.codec.encode({"command": "next"})
        if not self._active:
            self._syncs.append(None)
            proc.write(proc.codec.encode({"command": "deactivate"}))

    def _owes_answer(self) -> bool:
        return bool(self._syncs)

    def _handle(self, messages: list[Message]) -> None:
        for message in messages:
            command = message.get("command")
            try:
                if command == "emit":
                    self._emit(message)
                elif command == "sync":
                    if self._syncs:
                        waiter = self._syncs.popleft()
                        if waiter is not None and not waiter.done():
                            waiter.set_result(None)
                else:
                    self._common(message, command)
            except Exception as exc:
                self._protocol_error(exc, command)

    def _emit(self, message: Message) -> None:
        values = message.get("tuple")
        if not isinstance(values, list):
            raise ProtocolError(f"emit without a tuple list: {message!r:.200}")
        stream = message.get("stream") or DEFAULT_STREAM
        msg_id = message.get("id")
        if isinstance(msg_id, list):
            msg_id = _hashable(msg_id)
        task = message.get("task")
        if task:
            self.emit_direct(task, values, stream, msg_id)
        elif message.get("need_task_ids", True) is False:
            self.emit(values, stream, msg_id)
        else:
            tasks = emitted_to(self._collector, stream, lambda: self.emit(values, stream, msg_id))
            self._reply_task_ids(message, tasks)
        if msg_id is not None:
            self._live.add(msg_id)

    async def _lost(self) -> None:
        """Wake ``next_tuple``; forget the dead process's ids and unanswered commands."""
        while self._syncs:
            waiter = self._syncs.popleft()
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._live.clear()


def _hashable(value: Any) -> Any:
    """A message id as a set or dict key: lists (from JSON) become tuples."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value
