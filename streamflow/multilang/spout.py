"""ShellSpout: a spout run by a process in any language, over Storm's multilang protocol
(Storm's ``ShellSpout``).

The protocol drives a spout with commands, each answered by ``sync``: ``next`` (emit
what you have), ``ack`` and ``fail`` (a tuple tree ended), ``activate`` and
``deactivate``. ``next_tuple`` sends ``next`` and waits for its sync, handing the emits
that come before it to the task's collector; ``ack`` and ``fail`` are written without
waiting (their syncs are counted off as they come). A spout whose ``next`` emitted
nothing is called again only after the executor's idle wait (0.1 ms doubling to 5 ms),
so a spout with nothing to emit does not spin.

While the spout emits, ``next_tuple`` writes ``next`` commands in batches (up to
``topology.producer.batch.size``, and no more than the trees that
``topology.max.spout.pending`` still allows) and keeps one batch ahead: the process
answers them one after another as Storm would have asked, but one round trip between
the processes carries a batch instead of a tuple, and the process works on the next
batch while the executor sends the last one on (the quickstart's word count, on 2
cores: 10,000 words/s with one ``next`` per round trip, 12,600 with batches, 22,600 with
a batch ahead). After a round that emitted nothing it asks once.

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
from streamflow.multilang.shell import ProtocolError, ShellComponent
from streamflow.tuples import DEFAULT_STREAM


class ShellSpout(ShellComponent, AsyncSpout):
    """A spout run by ``command`` (with ``script`` as its argument) that speaks Storm's
    multilang protocol, one process per task.

    >>> builder.set_spout("sentences", ShellSpout("node", "randomsentence.js", outputs=["sentence"]))

    The arguments are :class:`~streamflow.multilang.ShellBolt`'s.
    """

    async def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self._syncs: deque[Any] = deque()
        """One entry per command sent and not yet answered by a sync: :data:`_NEXT` for
        a ``next``, the future ``next_tuple`` waits on for the last ``next`` of a batch,
        None for other commands."""
        self._batches: deque[asyncio.Future[None]] = deque()
        """The futures of the batches of ``next`` commands sent and not yet answered."""
        self._asked = 0
        """``next`` commands sent and not yet answered."""
        self._live: set[Any] = set()
        """Message ids the current process emitted, not yet acked or failed."""
        self._next = b""
        self._active = True
        self._emits = 0
        self._emits_seen = 0
        self._streaming = False
        """Whether the last batch emitted: ask for whole batches, and one ahead."""
        self._batch = int(config.get("topology.producer.batch.size") or 1)
        pending = config.get("topology.max.spout.pending")
        self._max_pending = int(pending) if pending else None
        await self._open_process(config, context)

    async def next_tuple(self) -> None:
        if not self._up.is_set():
            return
        if not self._batches:
            self._ask()
        if self._streaming and len(self._batches) < 2:
            self._ask()  # the process works on the next batch while this one is sent on
        waiter = self._batches[0]
        await waiter
        if self._batches and self._batches[0] is waiter:
            self._batches.popleft()
        self._streaming = self._emits > self._emits_seen
        self._emits_seen = self._emits

    def _ask(self) -> None:
        """Write a batch of ``next`` commands: one after a round that emitted nothing,
        else up to the batch size that max-spout-pending leaves room for."""
        asks = self._batch if self._streaming else 1
        if self._max_pending is not None:
            asks = min(asks, self._max_pending - len(self._live) - self._asked)
        if asks < 1:
            if self._batches:
                return
            asks = 1  # Storm asks at least once a call, whatever is pending
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for _ in range(asks - 1):
            self._send(self._next, _NEXT)
        self._send(self._next, waiter)
        self._asked += asks
        self._batches.append(waiter)

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

    def _send(self, data: bytes, waiter: Any) -> None:
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
                        if waiter is not None:
                            self._asked -= 1
                            if waiter is not _NEXT and not waiter.done():
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
        self._emit_as_asked(message, values, stream, msg_id)
        self._emits += 1
        if msg_id is not None:
            self._live.add(msg_id)

    async def _lost(self) -> None:
        """Wake ``next_tuple``; forget the dead process's ids and unanswered commands."""
        self._syncs.clear()
        while self._batches:
            waiter = self._batches.popleft()
            if not waiter.done():
                waiter.set_result(None)
        self._asked = 0
        self._live.clear()


_NEXT = object()
"""A ``next`` command's entry in the syncs owed, when nobody waits for its sync."""


def _hashable(value: Any) -> Any:
    """A message id as a set or dict key: lists (from JSON) become tuples."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value
