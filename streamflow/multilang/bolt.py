"""ShellBolt: a bolt whose tuples are processed by a process in any language, over
Storm's multilang protocol (Storm's ``ShellBolt``).

Tuples are pipelined: ``process`` encodes each input tuple, the batch is written to the
process in one write after the executor's batch, and the bolt goes on with the next
batch without waiting for acks, as long as fewer than ``topology.shellbolt.max.pending``
tuples handed to the process are unanswered (acked or failed). Past that it waits for
answers, unless the process has shown that it read everything it was sent (it answered
a heartbeat written after the last tuple): a bolt that holds tuples until a tick tuple,
as pystorm's ``BatchingBolt`` does, then keeps getting input instead of waiting for
ever. The process's emits, acks and fails are read by a task of the bolt's own and sent
on after each read.

When the process dies, every tuple it had and had not answered fails (its spout
replays it), the death is the task's error, and a new process is started after a
back-off; tuples that arrive meanwhile wait for it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

from streamflow.components import Bolt, TaskContext
from streamflow.multilang.process import ComponentProcess
from streamflow.multilang.protocol import Message
from streamflow.multilang.shell import ProtocolError, ShellComponent
from streamflow.tuples import DEFAULT_STREAM, SYSTEM_COMPONENT, TICK_STREAM, Origin, Tuple

HEARTBEAT_STREAM = "__heartbeat"
SYSTEM_TASK = -1
"""The task id of tick and heartbeat tuples, as Storm sends them."""


class ShellBolt(ShellComponent, Bolt):
    """A bolt run by ``command`` (with ``script`` as its argument, as Storm's ShellBolt
    takes them) that speaks Storm's multilang protocol on its stdin and stdout, one
    process per task.

    >>> builder.set_bolt("split", ShellBolt("node", "splitsentence.js", outputs=["word"]), 2)

    ``outputs`` declares the fields it emits, as for any bolt. ``serializer`` is ``json``
    or ``msgpack``; by default the one the command line asks for (``-s msgpack``), else
    ``topology.multilang.serializer``'s, else json. ``cwd``: where the command runs (a
    relative command or script is found there); by default the topology file's
    directory. ``env``: variables added to the process's environment.
    """

    async def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self._inflight: dict[int, Tuple] = {}
        """Tuples handed to the process (or about to be) and not yet acked or failed,
        by the id the process knows them by."""
        self._out: list[bytes] = []
        self._seq = 0
        self._written = 0
        """The id of the last tuple written to the process."""
        self._heard_upto = 0
        """The id of the last tuple the process has surely read (it answered a
        heartbeat written after it)."""
        self._beats: list[int] = []
        """For each heartbeat sent and not yet answered, the last id written before it."""
        self._room = asyncio.Event()
        self._heads: dict[Origin, bytes] = {}
        self._max_pending = int(config["topology.shellbolt.max.pending"])
        tick = config.get("topology.tick.tuple.freq.secs") or self.tick_seconds
        self._tick_values = [int(tick) if float(tick).is_integer() else tick] if tick else []
        await self._open_process(config, context)

    def process(self, tup: Tuple) -> None:
        """Encode ``tup`` for the process; it is written after the batch."""
        origin = tup.origin
        head = self._heads.get(origin)
        if head is None:
            head = self._head(origin)
        self._seq += 1
        if origin.stream == TICK_STREAM and origin.source == SYSTEM_COMPONENT:
            data = self._codec.encode_tuple(head, self._tick_values, str(self._seq))
        else:
            data = self._codec.encode_tuple(head, tup.values, str(self._seq))  # may raise: the tuple fails
        self._inflight[self._seq] = tup
        self._out.append(data)

    async def end_batch(self) -> None:
        """Write the batch to the process; wait while too many tuples are unanswered."""
        if self._out:
            while not self._up.is_set():
                await self._up.wait()  # a new process is starting
            proc = self._proc
            assert proc is not None
            data = b"".join(self._out)
            self._out.clear()
            proc.write(data)
            self._written = self._seq
            await proc.drain()
        while len(self._inflight) > self._max_pending and self._heard_upto < self._written and self._up.is_set():
            if not self._beats or self._beats[-1] < self._written:
                self._heartbeat()  # its answer tells that the process read all we wrote
            self._room.clear()
            await self._room.wait()

    async def cleanup(self) -> None:
        await self._close_process()

    # -- the process's side ------------------------------------------------------------

    def _started(self, proc: ComponentProcess) -> None:
        self._codec = proc.codec
        self._heads.clear()
        self._beats.clear()
        self._heard_upto = self._written

    def _head(self, origin: Origin) -> bytes:
        if len(self._heads) > 4096:
            self._heads.clear()
        if origin.stream == TICK_STREAM and origin.source == SYSTEM_COMPONENT:
            head = self._codec.tuple_head(SYSTEM_COMPONENT, TICK_STREAM, SYSTEM_TASK)
        else:
            head = self._codec.tuple_head(origin.source, origin.stream, origin.source_task)
        self._heads[origin] = head
        return head

    def _heartbeat(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._seq += 1
        beat: dict[str, Any] = {"id": str(self._seq), "comp": None, "stream": HEARTBEAT_STREAM,
                                "task": SYSTEM_TASK, "tuple": []}
        self._beats.append(self._written)
        proc.write(self._codec.encode(beat))

    def _tick_watch(self) -> None:
        self._heartbeat()

    def _handle(self, messages: list[Message]) -> None:
        inflight = self._inflight
        acked: list[Tuple] = []
        for message in messages:
            command = message.get("command")
            try:
                if command == "ack":
                    acked.append(_answered(inflight, message))
                elif command == "emit":
                    self._emit(message)
                elif command == "fail":
                    self.fail(_answered(inflight, message))
                elif command == "sync":
                    if self._beats:
                        self._heard_upto = max(self._heard_upto, self._beats.pop(0))
                else:
                    self._common(message, command)
            except Exception as exc:
                self._protocol_error(exc, command)
        if acked:
            self.ack_all(acked)
        if len(inflight) <= self._max_pending or self._heard_upto >= self._written:
            self._room.set()

    def _emit(self, message: Message) -> None:
        values = message.get("tuple")
        if not isinstance(values, list):
            raise ProtocolError(f"emit without a tuple list: {message!r:.200}")
        stream = message.get("stream") or DEFAULT_STREAM
        anchors = message.get("anchors")
        tuples: list[Tuple] | None = None
        if anchors:
            if isinstance(anchors, (str, int)):
                anchors = [anchors]
            inflight = self._inflight
            tuples = []
            for anchor in anchors:
                tup = inflight.get(_to_int(anchor))
                if tup is None:
                    raise ProtocolError(f"emit anchored to unknown or already answered tuple id {anchor!r}")
                tuples.append(tup)
        self._emit_as_asked(message, values, stream, tuples)

    async def _handled(self) -> None:
        await self._collector.flush()
        self.flush_acks()

    async def _lost(self) -> None:
        """Fail every tuple the dead process had; tuples not yet written wait for the next."""
        written = self._written
        failed = [seq for seq in self._inflight if seq <= written]
        for seq in failed:
            self.fail(self._inflight.pop(seq))
        self._beats.clear()
        await self._collector.flush()
        self.flush_acks()
        self._room.set()


def _id(message: Message) -> int:
    return _to_int(message.get("id"))


def _to_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _answered(inflight: dict[int, Tuple], message: Message) -> Tuple:
    """The tuple an ``ack`` or ``fail`` answers, no longer in flight."""
    tup = inflight.pop(_id(message), None)
    if tup is None:
        raise ProtocolError(f"{message.get('command')} of unknown or already answered tuple id "
                            f"{message.get('id')!r}")
    return tup
